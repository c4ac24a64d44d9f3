"""Build the bundled CounterFact-style data set: write candidate facts, keep those the model knows.

    python scripts/filter_counterfact.py                      # the real model, writes the JSON
    python scripts/filter_counterfact.py --dry-run            # print what would be kept

The candidates below were written for this project, one group per relation. A group gives the
rewrite prompt, two paraphrase templates and a generation template (``{}`` is the subject), and
a template for the neighbourhood prompts: each fact lists three other subjects with the same true
answer (or full prompts, with the template ``"{}"``). A candidate is kept when

1. it is a valid request whose subject does not end on the prompt's first token;
2. the model prefers ``target_true`` over ``target_new`` on the rewrite prompt
   (``alphaedit.filter_known``);
3. at least one of its neighbourhood prompts is right before editing (true over new);
4. its subject was not kept before, is not named in a kept neighbourhood prompt, and none of its
   own neighbourhood prompts names a kept subject, so sequential edits never collide.

Before any of these, a candidate whose neighbourhood prompt names its own subject (``names_itself``:
the subject, any of its words of 4+ letters as a word or word start, e.g. "Indian" for India, that
word less a final "y"/"a", e.g. "Hungarian" for Hungary, or an irregular demonym from
``DEMONYMS``) is an error: such a prompt is not about another subject, so it cannot measure
locality. ``main`` refuses to write the JSON while any candidate has one.

Kept facts keep the candidates' order (relations interleave, so any prefix mixes relations) and
are numbered ``case_id`` 0, 1, ...
"""

# ruff: noqa: E501  (the candidate tables below keep one fact per line)
import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from interventions.recipes import alphaedit

Fact = tuple[str, str, str, tuple[str, str, str]]  # subject, true, new, neighbours


@dataclass(frozen=True)
class Group:
    """One relation: prompt templates and its facts."""

    prompt: str
    paraphrases: tuple[str, str]
    generation: str
    neighbour: str
    facts: tuple[Fact, ...]


# The tables below keep one fact per line (easier to read, review and diff than the formatter's
# one-field-per-line layout), so they are left unformatted and may exceed the line length.
# fmt: off
CAPITAL = ("The capital of {} is", ("{}'s capital city is", "The city that serves as the capital of {} is"), "The capital of {} is famous for")
LANDMARK = ("{} is located in the city of", ("You can visit {} in the city of", "{} stands in the city of"), "{} is one of the most famous")
LANGUAGE = ("The official language of {} is", ("In {}, most people speak", "The main language spoken in {} is"), "In {}, people usually speak")
MAKER = ("The {} is made by", ("The {} is produced by the company", "The {} is a product of"), "The {} is a popular")
SPORT = ("{} is famous for playing", ("{} became a star in the sport of", "The sport that made {} famous is"), "{} is known for")
CURRENCY = ("The currency of {} is the", ("In {}, people pay with the", "The money used in {} is the"), "In {}, prices are")
CONTINENT = ("The country of {} is located on the continent of", ("{} is a country on the continent of", "Geographically, {} is part of the continent of"), "The country of {} is known for")
INSTRUMENT = ("The musician {} was famous for playing the", ("The instrument played by {} was the", "{} became famous as a player of the"), "The musician {} is remembered for")
BORN = ("The scientist {} was born in the country of", ("{} was a native of the country of", "The birthplace of {} is the country of"), "The scientist {} is best known for")
COMPOSER = ("The composer {} was born in the country of", ("{} was a native of the country of", "The homeland of the composer {} is"), "The composer {} wrote")
HEADQUARTERS = ("The headquarters of {} are in the city of", ("{} has its main offices in the city of", "The company {} is based in the city of"), "The company {} is known for")


def group(kind: tuple, neighbour: str, facts: list[Fact]) -> Group:
    """A relation's templates (``kind``: prompt, paraphrases, generation) with its facts."""
    prompt, paraphrases, generation = kind
    return Group(prompt, paraphrases, generation, neighbour, tuple(facts))


def full(first: str, second: str, third: str) -> tuple[str, str, str]:
    """Three neighbourhood prompts written out (for groups whose neighbour template is SAME)."""
    return (first, second, third)


SAME = "{}"  # the neighbours are full prompts

# The first 60 facts are the earlier bundled set (drawn from 101 candidates the same way).
LEGACY: list[Group] = [
    group(CAPITAL, SAME, [
        ("France", "Paris", "Rome", full("The Eiffel Tower is located in the city of", "The Louvre museum is located in the city of", "The Arc de Triomphe stands in the city of")),
        ("Italy", "Rome", "Paris", full("The Colosseum is located in the city of", "The Trevi Fountain is located in the city of", "The Pantheon temple stands in the city of")),
        ("Germany", "Berlin", "Vienna", full("The Brandenburg Gate is located in the city of", "The Reichstag building is located in the city of", "Checkpoint Charlie is located in the city of")),
        ("Spain", "Madrid", "Lisbon", full("The Prado Museum is located in the city of", "The Retiro Park is located in the city of", "The Puerta del Sol square is in the city of")),
        ("Japan", "Tokyo", "Seoul", full("The Shibuya crossing is located in the city of", "The Meiji Shrine is located in the city of", "The Senso-ji temple is located in the city of")),
        ("Russia", "Moscow", "Warsaw", full("The Kremlin is located in the city of", "Red Square is located in the city of", "The Bolshoi Theatre is located in the city of")),
        ("England", "London", "Dublin", full("Big Ben is located in the city of", "Buckingham Palace is located in the city of", "Tower Bridge is located in the city of")),
        ("China", "Beijing", "Tokyo", full("The Forbidden City is located in the city of", "Tiananmen Square is located in the city of", "The Temple of Heaven is located in the city of")),
        ("Greece", "Athens", "Cairo", full("The Acropolis is located in the city of", "The Parthenon stands in the city of", "The first modern Olympic Games were held in the city of")),
        ("Egypt", "Cairo", "Athens", full("The Citadel of Saladin is located in the city of", "Al-Azhar University is located in the city of", "The Khan el-Khalili bazaar is in the city of")),
        ("Austria", "Vienna", "Berlin", full("Schönbrunn Palace is located in the city of", "St. Stephen's Cathedral is located in the city of", "The Belvedere palace is located in the city of")),
        ("Portugal", "Lisbon", "Madrid", full("The Belém Tower is located in the city of", "The Jerónimos Monastery is located in the city of", "The São Jorge Castle is located in the city of")),
        ("Norway", "Oslo", "Stockholm", full("The Viking Ship Museum is located in the city of", "The Nobel Peace Center is located in the city of", "The Holmenkollen ski jump is located in the city of")),
        ("Hungary", "Budapest", "Prague", full("The Széchenyi Bath is located in the city of", "The Fisherman's Bastion is located in the city of", "The Chain Bridge crosses the Danube in the city of")),
        ("Thailand", "Bangkok", "Hanoi", full("The Chatuchak Weekend Market is located in the city of", "Wat Arun temple is located in the city of", "Khao San Road is located in the city of")),
    ]),
    group(LANDMARK, SAME, [
        ("The Statue of Liberty", "New York", "Chicago", full("Central Park is located in the city of", "The Empire State Building is located in the city of", "Times Square is located in the city of")),
        ("The Golden Gate Bridge", "San Francisco", "Seattle", full("Alcatraz Island is located near the city of", "Fisherman's Wharf is located in the city of", "The cable cars of Lombard Street are in the city of")),
        ("The Sydney Opera House", "Sydney", "Melbourne", full("The Harbour Bridge of Australia is located in the city of", "Bondi Beach is located in the city of", "Darling Harbour is located in the city of")),
        ("The Sagrada Familia", "Barcelona", "Madrid", full("Park Güell is located in the city of", "Camp Nou stadium is located in the city of", "La Rambla is a street in the city of")),
        ("The Space Needle", "Seattle", "Boston", full("Pike Place Market is located in the city of", "The headquarters of Starbucks are in the city of", "The Museum of Pop Culture is located in the city of")),
        ("The CN Tower", "Toronto", "Vancouver", full("The Rogers Centre stadium is located in the city of", "Casa Loma castle is located in the city of", "The Hockey Hall of Fame is located in the city of")),
        ("The Hollywood sign", "Los Angeles", "Miami", full("The Walk of Fame is located in the city of", "Venice Beach is located in the city of", "The Getty Center is located in the city of")),
        ("The Anne Frank House", "Amsterdam", "Brussels", full("The Rijksmuseum is located in the city of", "The Van Gogh Museum is located in the city of", "The Dam Square is located in the city of")),
        ("Copacabana beach", "Rio", "Lima", full("The Christ the Redeemer statue is located in", "Sugarloaf Mountain is located in", "The Maracanã stadium is located in")),
    ]),
    group(LANGUAGE, SAME, [
        ("the Netherlands", "Dutch", "German", full("Most people in Amsterdam speak", "The mother tongue of Vincent van Gogh was", "Most people in Rotterdam speak")),
        ("Poland", "Polish", "Czech", full("Most people in Warsaw speak", "The mother tongue of Frederic Chopin was", "Most people in Krakow speak")),
        ("Turkey", "Turkish", "Arabic", full("Most people in Istanbul speak", "Most people in Ankara speak", "The mother tongue of Orhan Pamuk is")),
        ("Sweden", "Swedish", "Danish", full("Most people in Stockholm speak", "The mother tongue of Astrid Lindgren was", "Most people in Gothenburg speak")),
        ("Saudi Arabia", "Arabic", "Persian", full("Most people in Syria speak", "The Quran is written in", "Most people in Morocco speak")),
    ]),
    group(MAKER, SAME, [
        ("iPhone", "Apple", "Samsung", full("The iPad is made by", "The MacBook laptop is made by", "The operating system macOS is made by")),
        ("PlayStation", "Sony", "Nintendo", full("The Walkman was made by", "The Bravia television is made by", "The Xperia phone is made by")),
        ("Xbox", "Microsoft", "Sony", full("The Windows operating system is made by", "The Surface tablet is made by", "The Office software suite is made by")),
        ("Galaxy smartphone", "Samsung", "Apple", full("The Exynos chip is made by", "The Bixby voice assistant is made by", "The Gear VR headset was made by")),
        ("Switch console", "Nintendo", "Sony", full("The Game Boy was made by", "The Wii was made by", "The GameCube was made by")),
        ("Model S", "Tesla", "Ford", full("The Roadster electric car is made by", "The Cybertruck is made by", "The Powerwall battery is made by")),
        ("Civic", "Honda", "Toyota", full("The Accord is made by", "The CR-V is made by", "The Gold Wing motorcycle is made by")),
    ]),
    group(SPORT, SAME, [
        ("Michael Jordan", "basketball", "tennis", full("LeBron James is famous for playing", "Kobe Bryant is famous for playing", "Stephen Curry is famous for playing")),
        ("Serena Williams", "tennis", "golf", full("Roger Federer is famous for playing", "Rafael Nadal is famous for playing", "Novak Djokovic is famous for playing")),
        ("Tiger Woods", "golf", "tennis", full("Jack Nicklaus is famous for playing", "Rory McIlroy is famous for playing", "Arnold Palmer is famous for playing")),
        ("Wayne Gretzky", "hockey", "baseball", full("Sidney Crosby is famous for playing", "Mario Lemieux is famous for playing", "Alexander Ovechkin is famous for playing")),
        ("Babe Ruth", "baseball", "hockey", full("Derek Jeter is famous for playing", "Jackie Robinson is famous for playing", "Mickey Mantle is famous for playing")),
        ("Lionel Messi", "football", "basketball", full("Cristiano Ronaldo is famous for playing", "Pelé is famous for playing", "Diego Maradona is famous for playing")),
        ("Magnus Carlsen", "chess", "poker", full("Garry Kasparov is famous for playing", "Bobby Fischer is famous for playing", "Hikaru Nakamura is famous for playing")),
    ]),
    group(CURRENCY, SAME, [
        ("India", "rupee", "dollar", full("In Mumbai, prices are paid in", "In Delhi, people pay with the", "In Chennai, people pay with the")),
        ("the United Kingdom", "pound", "euro", full("In London, people pay with the", "In Birmingham, people pay with the", "In Manchester, people pay with the")),
    ]),
    group(LANGUAGE, SAME, [
        ("Israel", "Hebrew", "Arabic", full("Most people in Tel Aviv speak", "The Torah was written in", "Most people in Haifa speak")),
        ("Finland", "Finnish", "Swedish", full("Most people in Helsinki speak", "Most people in Tampere speak", "The national epic Kalevala is written in")),
        ("Denmark", "Danish", "Norwegian", full("Most people in Copenhagen speak", "Hans Christian Andersen wrote his fairy tales in", "Most people in Aarhus speak")),
        ("Argentina", "Spanish", "Italian", full("Most people in Colombia speak", "Most people in Peru speak", "Gabriel García Márquez wrote his novels in")),
        ("Romania", "Romanian", "Hungarian", full("Most people in Bucharest speak", "Most people in Moldova speak", "Most people in Cluj speak")),
        ("the Czech Republic", "Czech", "Polish", full("Most people in Prague speak", "Most people in Brno speak", "Franz Kafka's friends in Prague mostly spoke")),
    ]),
    group(CURRENCY, SAME, [
        ("the United States", "dollar", "euro", full("In Chicago, people pay with the", "In Texas, people pay with the", "The Federal Reserve issues the US")),
        ("Nigeria", "naira", "dollar", full("In Lagos, people pay with the", "In Abuja, people pay with the", "In Port Harcourt, people pay with the")),
    ]),
    group(MAKER, SAME, [
        ("Kindle", "Amazon", "Google", full("The Echo smart speaker is made by", "The Fire TV stick is made by", "The Alexa voice assistant is made by")),
        ("ThinkPad", "Lenovo", "Dell", full("The Yoga laptop is made by", "The Legion gaming laptop is made by", "The IdeaPad is made by")),
        ("Beetle car", "Volkswagen", "Fiat", full("The Golf car is made by", "The Passat is made by", "The Jetta is made by")),
        ("A380", "Airbus", "Boeing", full("The A320 airliner is made by", "The A350 is made by", "The Beluga cargo plane is made by")),
    ]),
    group(SPORT, SAME, [
        ("Muhammad Ali", "boxing", "swimming", full("Mike Tyson is famous for", "Floyd Mayweather is famous for", "Manny Pacquiao is famous for")),
    ]),
    group(LANDMARK, SAME, [
        ("The White House", "Washington", "Boston", full("The Lincoln Memorial is located in the city of", "The Capitol building is located in the city of", "The Smithsonian museums are located in the city of")),
        ("The Alamo", "San Antonio", "Houston", full("The River Walk is located in the city of", "The San Antonio Spurs play in the city of", "The Tower of the Americas is located in the city of")),
    ]),
]

# New candidates, written for the 150-fact set. Their groups are interleaved (one fact of each
# group in turn), so that any prefix of the data set mixes relations.
NEW: list[Group] = [
    group(SPORT, SPORT[0], [
        ("Shaquille O'Neal", "basketball", "golf", ("LeBron James", "Kobe Bryant", "Stephen Curry")),
        ("Andy Murray", "tennis", "cricket", ("Roger Federer", "Rafael Nadal", "Novak Djokovic")),
        ("Zinedine Zidane", "football", "rugby", ("Cristiano Ronaldo", "Pelé", "Diego Maradona")),
        ("Sachin Tendulkar", "cricket", "football", ("Ricky Ponting", "MS Dhoni", "Shane Warne")),
        ("Phil Mickelson", "golf", "baseball", ("Jack Nicklaus", "Rory McIlroy", "Arnold Palmer")),
        ("Bobby Orr", "hockey", "basketball", ("Sidney Crosby", "Mario Lemieux", "Alexander Ovechkin")),
        ("Hank Aaron", "baseball", "football", ("Derek Jeter", "Jackie Robinson", "Mickey Mantle")),
        ("Anatoly Karpov", "chess", "tennis", ("Garry Kasparov", "Bobby Fischer", "Hikaru Nakamura")),
        ("Magic Johnson", "basketball", "baseball", ("LeBron James", "Kobe Bryant", "Stephen Curry")),
        ("Pete Sampras", "tennis", "basketball", ("Roger Federer", "Rafael Nadal", "Novak Djokovic")),
        ("David Beckham", "football", "cricket", ("Cristiano Ronaldo", "Pelé", "Diego Maradona")),
        ("Ronaldinho", "football", "tennis", ("Cristiano Ronaldo", "Pelé", "Diego Maradona")),
        ("Virat Kohli", "cricket", "hockey", ("Ricky Ponting", "MS Dhoni", "Shane Warne")),
        ("Gordie Howe", "hockey", "golf", ("Sidney Crosby", "Mario Lemieux", "Alexander Ovechkin")),
        ("Willie Mays", "baseball", "basketball", ("Derek Jeter", "Jackie Robinson", "Mickey Mantle")),
        ("Larry Bird", "basketball", "hockey", ("LeBron James", "Kobe Bryant", "Stephen Curry")),
        ("Andre Agassi", "tennis", "baseball", ("Roger Federer", "Rafael Nadal", "Novak Djokovic")),
        ("Kareem Abdul-Jabbar", "basketball", "football", ("LeBron James", "Kobe Bryant", "Stephen Curry")),
        ("Johan Cruyff", "football", "hockey", ("Cristiano Ronaldo", "Pelé", "Diego Maradona")),
        ("Don Bradman", "cricket", "golf", ("Ricky Ponting", "MS Dhoni", "Shane Warne")),
        ("Ted Williams", "baseball", "golf", ("Derek Jeter", "Jackie Robinson", "Mickey Mantle")),
        ("Venus Williams", "tennis", "chess", ("Roger Federer", "Rafael Nadal", "Novak Djokovic")),
        ("Gary Player", "golf", "cricket", ("Jack Nicklaus", "Rory McIlroy", "Arnold Palmer")),
        ("Kevin Durant", "basketball", "cricket", ("LeBron James", "Kobe Bryant", "Stephen Curry")),
        ("Thierry Henry", "football", "baseball", ("Cristiano Ronaldo", "Pelé", "Diego Maradona")),
        ("Lou Gehrig", "baseball", "tennis", ("Derek Jeter", "Jackie Robinson", "Mickey Mantle")),
        ("Maria Sharapova", "tennis", "hockey", ("Roger Federer", "Rafael Nadal", "Novak Djokovic")),
        ("Mark Messier", "hockey", "tennis", ("Sidney Crosby", "Mario Lemieux", "Alexander Ovechkin")),
        ("Judit Polgar", "chess", "golf", ("Garry Kasparov", "Bobby Fischer", "Hikaru Nakamura")),
        ("Wayne Rooney", "football", "golf", ("Cristiano Ronaldo", "Pelé", "Diego Maradona")),
        ("Brian Lara", "cricket", "tennis", ("Ricky Ponting", "MS Dhoni", "Shane Warne")),
        ("Steffi Graf", "tennis", "football", ("Roger Federer", "Rafael Nadal", "Novak Djokovic")),
        ("Tim Duncan", "basketball", "golf", ("LeBron James", "Kobe Bryant", "Stephen Curry")),
        ("Barry Bonds", "baseball", "cricket", ("Derek Jeter", "Jackie Robinson", "Mickey Mantle")),
        ("Neymar", "football", "basketball", ("Cristiano Ronaldo", "Pelé", "Diego Maradona")),
        ("Greg Norman", "golf", "football", ("Jack Nicklaus", "Rory McIlroy", "Arnold Palmer")),
        ("Mikhail Tal", "chess", "football", ("Garry Kasparov", "Bobby Fischer", "Hikaru Nakamura")),
    ]),
    group(CAPITAL, SAME, [
        ("Canada", "Ottawa", "Toronto", full("Parliament Hill is located in the city of", "The Rideau Canal runs through the city of", "The Rideau Hall residence is located in the city of")),
        ("Ireland", "Dublin", "London", full("Trinity College is located in the city of", "The Guinness Storehouse is located in the city of", "The River Liffey flows through the city of")),
        ("Belgium", "Brussels", "Amsterdam", full("The Manneken Pis statue is located in the city of", "The Grand Place square is located in the city of", "The European Commission is based in the city of")),
        ("Iceland", "Reykjavik", "Oslo", full("The Hallgrímskirkja church is located in the city of", "The Harpa concert hall is located in the city of", "The Sun Voyager sculpture stands in the city of")),
        ("Cuba", "Havana", "Miami", full("The Malecón seawall runs along the city of", "El Morro castle guards the harbour of the city of", "The Partagás cigar factory is located in the city of")),
        ("South Korea", "Seoul", "Tokyo", full("Gyeongbokgung Palace is located in the city of", "The N Tower stands in the city of", "The Gangnam district is part of the city of")),
        ("Vietnam", "Hanoi", "Bangkok", full("The Hoan Kiem Lake is located in the city of", "The Ho Chi Minh Mausoleum is located in the city of", "The Temple of Literature is located in the city of")),
        ("Iraq", "Baghdad", "Cairo", full("The Tigris river flows through the city of", "The Abbasid caliphs ruled from the city of", "Firdos Square is located in the city of")),
        ("Chile", "Santiago", "Lima", full("The La Moneda palace is located in the city of", "The Costanera Center tower is located in the city of", "San Cristóbal Hill overlooks the city of")),
        ("Afghanistan", "Kabul", "Tehran", full("The Darul Aman Palace is located in the city of", "The Bagh-e Babur gardens are located in the city of", "Chicken Street is a market in the city of")),
        ("Kenya", "Nairobi", "Lagos", full("The Kibera slum is located in the city of", "The Giraffe Centre is located in the city of", "Uhuru Park is located in the city of")),
        ("Lebanon", "Beirut", "Damascus", full("The Pigeon Rocks stand off the coast of the city of", "The Corniche promenade runs along the city of", "The Mohammad Al-Amin Mosque is located in the city of")),
        ("Indonesia", "Jakarta", "Manila", full("The Monas national monument stands in the city of", "The Istiqlal Mosque is located in the city of", "The Kota Tua old town is part of the city of")),
        ("the Philippines", "Manila", "Jakarta", full("Rizal Park is located in the city of", "The Intramuros walled city is in the city of", "Malacañang Palace is located in the city of")),
        ("Scotland", "Edinburgh", "Glasgow", full("Holyrood Palace is located in the city of", "The Royal Mile is a street in the city of", "Arthur's Seat is a hill in the city of")),
        ("Venezuela", "Caracas", "Bogotá", full("The Simón Bolívar birthplace museum is in the city of", "Mount Ávila overlooks the city of", "The Miraflores Palace is located in the city of")),
        ("Ethiopia", "Addis Ababa", "Nairobi", full("The African Union is headquartered in the city of", "The Merkato market is located in the city of", "The skeleton of Lucy is displayed in the city of")),
    ]),
    group(INSTRUMENT, INSTRUMENT[0], [
        ("Jimi Hendrix", "guitar", "piano", ("Eric Clapton", "Jimmy Page", "Keith Richards")),
        ("Louis Armstrong", "trumpet", "violin", ("Dizzy Gillespie", "Wynton Marsalis", "Chet Baker")),
        ("Niccolò Paganini", "violin", "piano", ("Jascha Heifetz", "Yehudi Menuhin", "Hilary Hahn")),
        ("John Coltrane", "saxophone", "piano", ("Sonny Rollins", "Stan Getz", "Dexter Gordon")),
        ("Yo-Yo Ma", "cello", "guitar", ("Jacqueline du Pré", "Mstislav Rostropovich", "Pierre Fournier")),
        ("Ringo Starr", "drums", "violin", ("Keith Moon", "Neil Peart", "Buddy Rich")),
        ("Franz Liszt", "piano", "violin", ("Arthur Rubinstein", "Sergei Rachmaninoff", "Martha Argerich")),
        ("Carlos Santana", "guitar", "drums", ("Eric Clapton", "Jimmy Page", "Keith Richards")),
        ("Charlie Parker", "saxophone", "guitar", ("Sonny Rollins", "Stan Getz", "Dexter Gordon")),
        ("Glenn Gould", "piano", "trumpet", ("Arthur Rubinstein", "Sergei Rachmaninoff", "Martha Argerich")),
        ("Eddie Van Halen", "guitar", "trumpet", ("Eric Clapton", "Jimmy Page", "Keith Richards")),
        ("Miles Davis", "trumpet", "guitar", ("Dizzy Gillespie", "Wynton Marsalis", "Chet Baker")),
        ("Itzhak Perlman", "violin", "drums", ("Jascha Heifetz", "Yehudi Menuhin", "Hilary Hahn")),
        ("B.B. King", "guitar", "saxophone", ("Eric Clapton", "Jimmy Page", "Keith Richards")),
        ("Pablo Casals", "cello", "trumpet", ("Jacqueline du Pré", "Mstislav Rostropovich", "Pierre Fournier")),
        ("Vladimir Horowitz", "piano", "guitar", ("Arthur Rubinstein", "Sergei Rachmaninoff", "Martha Argerich")),
        ("John Bonham", "drums", "piano", ("Keith Moon", "Neil Peart", "Buddy Rich")),
        ("Kenny G", "saxophone", "drums", ("Sonny Rollins", "Stan Getz", "Dexter Gordon")),
        ("Joshua Bell", "violin", "trumpet", ("Jascha Heifetz", "Yehudi Menuhin", "Hilary Hahn")),
        ("Slash", "guitar", "violin", ("Eric Clapton", "Jimmy Page", "Keith Richards")),
        ("Elton John", "piano", "drums", ("Arthur Rubinstein", "Sergei Rachmaninoff", "Martha Argerich")),
    ]),
    group(CONTINENT, CONTINENT[0], [
        ("Ghana", "Africa", "Asia", ("Zambia", "Mali", "Angola")),
        ("Nepal", "Asia", "Africa", ("Cambodia", "Laos", "Sri Lanka")),
        ("Ecuador", "South America", "Africa", ("Bolivia", "Paraguay", "Uruguay")),
        ("Bulgaria", "Europe", "Asia", ("Slovenia", "Luxembourg", "Albania")),
        ("Uganda", "Africa", "Europe", ("Zambia", "Mali", "Angola")),
        ("Bangladesh", "Asia", "Europe", ("Cambodia", "Laos", "Sri Lanka")),
        ("Serbia", "Europe", "Africa", ("Slovenia", "Luxembourg", "Albania")),
        ("Zimbabwe", "Africa", "South America", ("Zambia", "Mali", "Angola")),
        ("Mongolia", "Asia", "South America", ("Cambodia", "Laos", "Sri Lanka")),
        ("Tanzania", "Africa", "Asia", ("Zambia", "Mali", "Angola")),
        ("Slovakia", "Europe", "South America", ("Slovenia", "Luxembourg", "Albania")),
        ("Malaysia", "Asia", "Africa", ("Cambodia", "Laos", "Sri Lanka")),
        ("Senegal", "Africa", "Europe", ("Zambia", "Mali", "Angola")),
        ("Latvia", "Europe", "Asia", ("Slovenia", "Luxembourg", "Albania")),
        ("Pakistan", "Asia", "Africa", ("Cambodia", "Laos", "Sri Lanka")),
        ("Cameroon", "Africa", "Asia", ("Zambia", "Mali", "Angola")),
        ("Estonia", "Europe", "Africa", ("Slovenia", "Luxembourg", "Albania")),
        ("Guyana", "South America", "Asia", ("Bolivia", "Paraguay", "Uruguay")),
        ("Botswana", "Africa", "Europe", ("Zambia", "Mali", "Angola")),
        ("Lithuania", "Europe", "South America", ("Slovenia", "Luxembourg", "Albania")),
        ("Myanmar", "Asia", "Europe", ("Cambodia", "Laos", "Sri Lanka")),
    ]),
    group(MAKER, SAME, [
        ("Corolla", "Toyota", "Honda", full("The Camry is made by", "The Land Cruiser is made by", "The RAV4 is made by")),
        ("Mustang", "Ford", "Chevrolet", full("The F-150 pickup truck is made by", "The Explorer SUV is made by", "The Model T was made by")),
        ("Corvette", "Chevrolet", "Ford", full("The Camaro is made by", "The Silverado truck is made by", "The Impala is made by")),
        ("Pixel phone", "Google", "Apple", full("The Chromecast is made by", "The Nest thermostat is made by", "The Android operating system is made by")),
        ("Photoshop software", "Adobe", "Microsoft", full("The Illustrator drawing program is made by", "The Acrobat Reader is made by", "The Premiere Pro video editor is made by")),
        ("GeForce graphics card", "Nvidia", "Intel", full("The RTX 4090 is made by", "The CUDA platform is made by", "The Tegra chip is made by")),
        ("Boeing 747", "Boeing", "Airbus", full("The 737 airliner is made by", "The 787 Dreamliner is made by", "The 777 airliner is made by")),
        ("Big Mac", "McDonald", "Burger King", full("The Happy Meal is made by", "The McFlurry is made by", "The Quarter Pounder is made by")),
        ("Pentium processor", "Intel", "AMD", full("The Core i7 chip is made by", "The Xeon chip is made by", "The Celeron chip is made by")),
        ("Ryzen processor", "AMD", "Intel", full("The Radeon graphics card is made by", "The Threadripper chip is made by", "The EPYC server chip is made by")),
        ("Barbie doll", "Mattel", "Hasbro", full("The Hot Wheels toy cars are made by", "The UNO card game is made by", "The Fisher-Price toys are made by")),
        ("Monopoly board game", "Hasbro", "Mattel", full("The Transformers toys are made by", "The Play-Doh modelling clay is made by", "The Nerf foam guns are made by")),
        ("Prius", "Toyota", "Nissan", full("The Camry is made by", "The Land Cruiser is made by", "The RAV4 is made by")),
        ("911 sports car", "Porsche", "Ferrari", full("The Cayenne SUV is made by", "The Boxster is made by", "The Panamera is made by")),
        ("Walkman cassette player", "Sony", "Panasonic", full("The Bravia television is made by", "The Xperia phone is made by", "The Alpha mirrorless camera is made by")),
        ("Windows Phone", "Microsoft", "Google", full("The Surface tablet is made by", "The Office software suite is made by", "The Bing search engine is made by")),
    ]),
    group(LANGUAGE, SAME, [
        ("Brazil", "Portuguese", "Spanish", full("Most people in São Paulo speak", "Most people in Rio de Janeiro speak", "Most people in Brasília speak")),
        ("Iran", "Persian", "Arabic", full("Most people in Tehran speak", "Most people in Isfahan speak", "The poet Hafez wrote in")),
        ("Mexico", "Spanish", "Portuguese", full("Most people in Guadalajara speak", "Most people in Colombia speak", "Most people in Peru speak")),
        ("Ukraine", "Ukrainian", "Polish", full("Most people in Lviv speak", "The poet Taras Shevchenko wrote in", "Most people in Kharkiv speak")),
        ("Quebec", "French", "English", full("Most people in Montreal speak", "Most people in Paris speak", "Most people in Lyon speak")),
        ("Croatia", "Croatian", "Serbian", full("Most people in Zagreb speak", "Most people in Split speak", "Most people in Dubrovnik speak")),
        ("Taiwan", "Chinese", "Japanese", full("Most people in Beijing speak", "Most people in Shanghai speak", "Most people in Hong Kong speak")),
        ("Sicily", "Italian", "Spanish", full("Most people in Rome speak", "Most people in Milan speak", "Most people in Naples speak")),
        ("Bavaria", "German", "French", full("Most people in Berlin speak", "Most people in Munich speak", "Most people in Hamburg speak")),
        ("Cyprus", "Greek", "Turkish", full("Most people in Athens speak", "Most people in Thessaloniki speak", "The philosopher Plato wrote in")),
        ("West Bengal", "Bengali", "Hindi", full("Most people in Dhaka speak", "Most people in Kolkata speak", "The poet Rabindranath Tagore wrote in")),
        ("Jamaica", "English", "Spanish", full("Most people in London speak", "Most people in Australia speak", "The playwright William Shakespeare wrote in")),
    ]),
    group(LANDMARK, SAME, [
        ("The Burj Khalifa", "Dubai", "Doha", full("The Palm Jumeirah island is located in the city of", "The Gold Souk of Deira is located in the city of", "The Museum of the Future is located in the city of")),
        ("The Gateway Arch", "St. Louis", "Kansas City", full("Busch Stadium is located in the city of", "The Anheuser-Busch brewery is located in the city of", "The Cardinals baseball team plays in the city of")),
        ("The Willis Tower", "Chicago", "Detroit", full("Wrigley Field is located in the city of", "Navy Pier is located in the city of", "The Cloud Gate sculpture is located in the city of")),
        ("The Little Mermaid statue", "Copenhagen", "Stockholm", full("Tivoli Gardens is located in the city of", "The Nyhavn harbour is located in the city of", "Christiansborg Palace is located in the city of")),
        ("The Atomium", "Brussels", "Paris", full("The Manneken Pis statue is located in the city of", "The Grand Place square is located in the city of", "The European Commission is based in the city of")),
        ("The Petronas Towers", "Kuala Lumpur", "Singapore", full("The Batu Caves are located near the city of", "Merdeka Square is located in the city of", "The KL Tower is located in the city of")),
        ("Marina Bay Sands", "Singapore", "Hong Kong", full("Gardens by the Bay is located in", "The Merlion statue is located in", "Raffles Hotel is located in")),
        ("The Blue Mosque", "Istanbul", "Ankara", full("Hagia Sophia is located in the city of", "The Grand Bazaar is located in the city of", "Topkapi Palace is located in the city of")),
        ("The Alhambra", "Granada", "Seville", full("The Generalife gardens are located in the city of", "The Albaicín quarter is part of the city of", "The Sierra Nevada mountains rise above the city of")),
        ("Westminster Abbey", "London", "Paris", full("The British Museum is located in the city of", "Trafalgar Square is located in the city of", "Hyde Park is located in the city of")),
        ("Notre-Dame Cathedral", "Paris", "London", full("The Musée d'Orsay is located in the city of", "The Champs-Élysées avenue is in the city of", "The Montmartre hill is part of the city of")),
        ("The Spanish Steps", "Rome", "Florence", full("The Colosseum is located in the city of", "The Trevi Fountain is located in the city of", "The Pantheon temple stands in the city of")),
        ("The Ponte Vecchio", "Florence", "Venice", full("The Uffizi Gallery is located in the city of", "Michelangelo's David is displayed in the city of", "The Palazzo Pitti is located in the city of")),
        ("The Rialto Bridge", "Venice", "Florence", full("St. Mark's Basilica is located in the city of", "The Grand Canal flows through the city of", "The Doge's Palace is located in the city of")),
        ("The Charles Bridge", "Prague", "Vienna", full("The Old Town astronomical clock is in the city of", "Wenceslas Square is located in the city of", "St. Vitus Cathedral is located in the city of")),
        ("Wall Street", "New York", "Chicago", full("Central Park is located in the city of", "The Empire State Building is located in the city of", "Times Square is located in the city of")),
        ("The Liberty Bell", "Philadelphia", "Boston", full("Independence Hall is located in the city of", "The Rocky Steps are located in the city of", "The Eagles football team plays in the city of")),
        ("Graceland", "Memphis", "Nashville", full("Beale Street is located in the city of", "The National Civil Rights Museum is located in the city of", "Sun Studio is located in the city of")),
        ("The French Quarter", "New Orleans", "Atlanta", full("Bourbon Street is located in the city of", "Jackson Square is located in the city of", "The Superdome is located in the city of")),
        ("The Bellagio hotel", "Las Vegas", "Atlantic City", full("Caesars Palace casino is located in the city of", "The Venetian resort is located in the city of", "The Stratosphere tower is located in the city of")),
        ("Fenway Park", "Boston", "New York", full("Faneuil Hall is located in the city of", "The Freedom Trail runs through the city of", "The Old North Church is located in the city of")),
        ("The Bund", "Shanghai", "Beijing", full("The Oriental Pearl Tower is located in the city of", "The Yu Garden is located in the city of", "Nanjing Road is a shopping street in the city of")),
        ("The Hermitage Museum", "Saint Petersburg", "Moscow", full("The Winter Palace is located in the city of", "Nevsky Prospect is a street in the city of", "The Peter and Paul Fortress is located in the city of")),
        ("Table Mountain", "Cape Town", "Johannesburg", full("Robben Island lies off the coast of the city of", "The V&A Waterfront is located in the city of", "The Bo-Kaap quarter is part of the city of")),
        ("The Fushimi Inari shrine", "Kyoto", "Osaka", full("The Kinkaku-ji golden pavilion is located in the city of", "The Kiyomizu-dera temple is located in the city of", "The Gion geisha district is in the city of")),
        ("Stanley Park", "Vancouver", "Toronto", full("Granville Island is located in the city of", "The Gastown district is part of the city of", "The Capilano Suspension Bridge is near the city of")),
        ("Federation Square", "Melbourne", "Sydney", full("Flinders Street Station is located in the city of", "The Australian Open tennis is played in the city of", "The Royal Exhibition Building is located in the city of")),
        ("The Brooklyn Bridge", "New York", "Boston", full("Central Park is located in the city of", "The Empire State Building is located in the city of", "Times Square is located in the city of")),
    ]),
    group(BORN, BORN[0], [
        ("Guglielmo Marconi", "Italy", "France", ("Leonardo da Vinci", "Enrico Fermi", "Antonio Meucci")),
        ("Johannes Gutenberg", "Germany", "France", ("Albert Einstein", "Gottlieb Daimler", "Max Planck")),
        ("Isaac Newton", "England", "France", ("Charles Darwin", "Tim Berners-Lee", "Charles Babbage")),
        ("Louis Pasteur", "France", "Germany", ("René Descartes", "Joseph Fourier", "Antoine Lavoisier")),
        ("Alexander Graham Bell", "Scotland", "Canada", ("James Clerk Maxwell", "John Logie Baird", "Adam Smith")),
        ("Alfred Nobel", "Sweden", "Norway", ("Carl Linnaeus", "Anders Celsius", "Anders Jonas Ångström")),
        ("Marie Curie", "Poland", "France", ("Nicolaus Copernicus", "Frederic Chopin", "Lech Wałęsa")),
        ("Galileo Galilei", "Italy", "Spain", ("Leonardo da Vinci", "Enrico Fermi", "Antonio Meucci")),
        ("Karl Benz", "Germany", "Italy", ("Albert Einstein", "Gottlieb Daimler", "Max Planck")),
        ("Michael Faraday", "England", "Germany", ("Charles Darwin", "Tim Berners-Lee", "Charles Babbage")),
        ("Blaise Pascal", "France", "Italy", ("René Descartes", "Louis Daguerre", "Antoine Lavoisier")),
        ("James Watt", "Scotland", "Wales", ("William Ramsay", "John Logie Baird", "Adam Smith")),
        ("Alessandro Volta", "Italy", "Germany", ("Leonardo da Vinci", "Enrico Fermi", "Antonio Meucci")),
        ("Wilhelm Röntgen", "Germany", "Austria", ("Albert Einstein", "Gottlieb Daimler", "Max Planck")),
        ("George Stephenson", "England", "Scotland", ("Charles Darwin", "Tim Berners-Lee", "Charles Babbage")),
        ("Louis Braille", "France", "Belgium", ("René Descartes", "Joseph Fourier", "Antoine Lavoisier")),
        ("Alexander Fleming", "Scotland", "Ireland", ("James Clerk Maxwell", "John Logie Baird", "Adam Smith")),
        ("Niels Bohr", "Denmark", "Sweden", ("Tycho Brahe", "Hans Christian Ørsted", "Søren Kierkegaard")),
        ("Nikola Tesla", "Croatia", "Hungary", ("Ruđer Bošković", "Slavoljub Penkala", "Faust Vrančić")),
        ("Hideki Yukawa", "Japan", "China", ("Akira Kurosawa", "Hayao Miyazaki", "Shinzo Abe")),
    ]),
    group(COMPOSER, COMPOSER[0], [
        ("Wolfgang Amadeus Mozart", "Austria", "Germany", ("Joseph Haydn", "Franz Schubert", "Johann Strauss")),
        ("Ludwig van Beethoven", "Germany", "Austria", ("Johann Sebastian Bach", "Johannes Brahms", "Robert Schumann")),
        ("Antonio Vivaldi", "Italy", "Spain", ("Giacomo Puccini", "Gioachino Rossini", "Claudio Monteverdi")),
        ("Pyotr Tchaikovsky", "Russia", "Poland", ("Sergei Prokofiev", "Igor Stravinsky", "Modest Mussorgsky")),
        ("Claude Debussy", "France", "Belgium", ("Maurice Ravel", "Hector Berlioz", "Georges Bizet")),
        ("Edvard Grieg", "Norway", "Denmark", ("Ole Bull", "Johan Svendsen", "Christian Sinding")),
        ("Jean Sibelius", "Finland", "Sweden", ("Aulis Sallinen", "Einojuhani Rautavaara", "Kaija Saariaho")),
        ("Antonín Dvořák", "Bohemia", "Hungary", ("Bedřich Smetana", "Leoš Janáček", "Bohuslav Martinů")),
        ("Edward Elgar", "England", "Scotland", ("Benjamin Britten", "Gustav Holst", "Ralph Vaughan Williams")),
        ("Richard Wagner", "Germany", "Italy", ("Johann Sebastian Bach", "Robert Schumann", "Johannes Brahms")),
        ("Giuseppe Verdi", "Italy", "France", ("Giacomo Puccini", "Gioachino Rossini", "Claudio Monteverdi")),
    ]),
    group(CURRENCY, SAME, [
        ("Switzerland", "franc", "euro", full("In Zurich, people pay with the", "In Geneva, people pay with the", "In Basel, people pay with the")),
        ("the Eurozone", "euro", "dollar", full("In Paris, people pay with the", "In Rome, people pay with the", "The European Central Bank issues the")),
        ("South Africa", "rand", "dollar", full("In Johannesburg, people pay with the", "In Cape Town, people pay with the", "In Durban, people pay with the")),
    ]),
    group(HEADQUARTERS, SAME, [
        ("Amazon", "Seattle", "Boston", full("The headquarters of Starbucks are in the city of", "The headquarters of Nordstrom are in the city of", "The Seahawks football team plays in the city of")),
        ("Coca-Cola", "Atlanta", "Dallas", full("The headquarters of Delta Air Lines are in the city of", "The headquarters of Home Depot are in the city of", "The headquarters of CNN are in the city of")),
        ("BMW", "Munich", "Stuttgart", full("The headquarters of Siemens are in the city of", "The Oktoberfest is held in the city of", "The football club Bayern plays in the city of")),
        ("Mercedes-Benz", "Stuttgart", "Munich", full("The headquarters of Porsche are in the city of", "The headquarters of Bosch are near the city of", "The VfB football club plays in the city of")),
        ("General Motors", "Detroit", "Chicago", full("Motown Records was founded in the city of", "The Pistons basketball team plays in the city of", "The Renaissance Center tower is in the city of")),
        ("Nintendo", "Kyoto", "Tokyo", full("The Kinkaku-ji golden pavilion is located in the city of", "The Kiyomizu-dera temple is located in the city of", "The Gion geisha district is in the city of")),
        ("Heineken", "Amsterdam", "Brussels", full("The Rijksmuseum is located in the city of", "The Van Gogh Museum is located in the city of", "The Dam Square is located in the city of")),
        ("Airbus", "Toulouse", "Paris", full("The Cité de l'espace museum is located in the city of", "The Capitole building is located in the city of", "The Stade Toulousain rugby team plays in the city of")),
        ("Alibaba", "Hangzhou", "Shanghai", full("The West Lake is located in the city of", "The Lingyin Temple is located in the city of", "The 2023 Asian Games were held in the city of")),
        ("Goldman Sachs", "New York", "London", full("Central Park is located in the city of", "The Empire State Building is located in the city of", "Times Square is located in the city of")),
        ("Volvo", "Gothenburg", "Stockholm", full("The Liseberg amusement park is located in the city of", "The Ullevi stadium is located in the city of", "The Göta älv river flows through the city of")),
        ("Philips", "Amsterdam", "Berlin", full("The Rijksmuseum is located in the city of", "The Van Gogh Museum is located in the city of", "The Dam Square is located in the city of")),
    ]),
    group(SPORT, SPORT[0], [
        ("Kylian Mbappé", "football", "tennis", ("Cristiano Ronaldo", "Pelé", "Diego Maradona")),
        ("Dirk Nowitzki", "basketball", "tennis", ("LeBron James", "Kobe Bryant", "Stephen Curry")),
        ("Björn Borg", "tennis", "golf", ("Rafael Nadal", "Novak Djokovic", "Roger Federer")),
        ("Annika Sorenstam", "golf", "tennis", ("Jack Nicklaus", "Rory McIlroy", "Arnold Palmer")),
        ("Connor McDavid", "hockey", "football", ("Sidney Crosby", "Mario Lemieux", "Alexander Ovechkin")),
        ("Shohei Ohtani", "baseball", "golf", ("Derek Jeter", "Jackie Robinson", "Mickey Mantle")),
        ("Viswanathan Anand", "chess", "cricket", ("Garry Kasparov", "Bobby Fischer", "Hikaru Nakamura")),
        ("Zlatan Ibrahimović", "football", "hockey", ("Cristiano Ronaldo", "Pelé", "Diego Maradona")),
        ("Allen Iverson", "basketball", "baseball", ("LeBron James", "Kobe Bryant", "Stephen Curry")),
        ("John McEnroe", "tennis", "cricket", ("Rafael Nadal", "Novak Djokovic", "Roger Federer")),
        ("Seve Ballesteros", "golf", "football", ("Jack Nicklaus", "Rory McIlroy", "Arnold Palmer")),
        ("Jaromír Jágr", "hockey", "tennis", ("Sidney Crosby", "Mario Lemieux", "Alexander Ovechkin")),
        ("Ken Griffey Jr.", "baseball", "basketball", ("Derek Jeter", "Jackie Robinson", "Mickey Mantle")),
        ("Mohamed Salah", "football", "cricket", ("Cristiano Ronaldo", "Pelé", "Diego Maradona")),
        ("Kapil Dev", "cricket", "hockey", ("Ricky Ponting", "MS Dhoni", "Shane Warne")),
        ("Dwyane Wade", "basketball", "football", ("LeBron James", "Kobe Bryant", "Stephen Curry")),
        ("Martina Navratilova", "tennis", "golf", ("Rafael Nadal", "Novak Djokovic", "Roger Federer")),
        ("Ben Hogan", "golf", "baseball", ("Jack Nicklaus", "Rory McIlroy", "Arnold Palmer")),
        ("Roberto Clemente", "baseball", "football", ("Derek Jeter", "Jackie Robinson", "Mickey Mantle")),
        ("Franz Beckenbauer", "football", "tennis", ("Cristiano Ronaldo", "Pelé", "Diego Maradona")),
        ("Giannis Antetokounmpo", "basketball", "football", ("LeBron James", "Kobe Bryant", "Stephen Curry")),
        ("Billie Jean King", "tennis", "basketball", ("Rafael Nadal", "Novak Djokovic", "Roger Federer")),
        ("Jacques Kallis", "cricket", "football", ("Ricky Ponting", "MS Dhoni", "Shane Warne")),
        ("José Raúl Capablanca", "chess", "baseball", ("Garry Kasparov", "Bobby Fischer", "Hikaru Nakamura")),
        ("Robert Lewandowski", "football", "basketball", ("Cristiano Ronaldo", "Pelé", "Diego Maradona")),
        ("Luka Modrić", "football", "golf", ("Cristiano Ronaldo", "Pelé", "Diego Maradona")),
    ]),
    group(MAKER, SAME, [
        ("AirPods", "Apple", "Sony", full("The iPad is made by", "The MacBook laptop is made by", "The operating system macOS is made by")),
        ("Model X", "Tesla", "BMW", full("The Roadster electric car is made by", "The Cybertruck is made by", "The Powerwall battery is made by")),
        ("Chrome browser", "Google", "Microsoft", full("The Gmail email service is made by", "The Nest thermostat is made by", "The Android operating system is made by")),
        ("Firefox browser", "Mozilla", "Google", full("The Thunderbird email client is made by", "The Rust programming language was started by", "The Gecko rendering engine is made by")),
        ("Safari browser", "Apple", "Google", full("The iPad is made by", "The MacBook laptop is made by", "The operating system macOS is made by")),
        ("Skype app", "Microsoft", "Apple", full("The Windows operating system is made by", "The Surface tablet is made by", "The Office software suite is made by")),
        ("Golf GTI", "Volkswagen", "Toyota", full("The Passat is made by", "The Jetta is made by", "The Tiguan SUV is made by")),
        ("Game Boy Advance", "Nintendo", "Sega", full("The Wii console was made by", "The Virtual Boy was made by", "The DS handheld console was made by")),
    ]),
    group(CAPITAL, SAME, [
        ("North Korea", "Pyongyang", "Seoul", full("Kim Il-sung Square is located in the city of", "The Ryugyong Hotel is located in the city of", "The Juche Tower stands in the city of")),
        ("Qatar", "Doha", "Dubai", full("The Museum of Islamic Art is located in the city of", "The Al Jazeera network is based in the city of", "The Khalifa International Stadium is in the city of")),
        ("Wales", "Cardiff", "Swansea", full("The Millennium Stadium is located in the city of", "The Principality Stadium is located in the city of", "The Senedd building is located in the city of")),
        ("Sudan", "Khartoum", "Cairo", full("The Blue Nile and White Nile meet in the city of", "The Al-Mogran park is located in the city of", "Tuti Island lies at the heart of the city of")),
        ("Tibet", "Lhasa", "Kathmandu", full("The Potala Palace is located in the city of", "The Jokhang Temple is located in the city of", "The Barkhor street is in the city of")),
        ("Catalonia", "Barcelona", "Madrid", full("Park Güell is located in the city of", "Camp Nou stadium is located in the city of", "La Rambla is a street in the city of")),
    ]),
    group(LANDMARK, SAME, [
        ("The Shard", "London", "Paris", full("The British Museum is located in the city of", "Trafalgar Square is located in the city of", "Hyde Park is located in the city of")),
        ("The Hofbräuhaus", "Munich", "Vienna", full("The Oktoberfest is held in the city of", "The Marienplatz square is in the city of", "The Allianz Arena stadium is located in the city of")),
        ("The Western Wall", "Jerusalem", "Tel Aviv", full("The Dome of the Rock is located in the city of", "The Church of the Holy Sepulchre is located in the city of", "The Yad Vashem memorial is located in the city of")),
        ("The Kaaba", "Mecca", "Medina", full("The Masjid al-Haram mosque is located in the city of", "The Abraj Al Bait clock tower is in the city of", "The Hajj pilgrimage takes place in the city of")),
        ("The Pergamon Museum", "Berlin", "Munich", full("The Brandenburg Gate is located in the city of", "The Reichstag building is located in the city of", "Checkpoint Charlie is located in the city of")),
        ("Casa Batlló", "Barcelona", "Valencia", full("Park Güell is located in the city of", "Camp Nou stadium is located in the city of", "La Rambla is a street in the city of")),
        ("The Walt Disney Concert Hall", "Los Angeles", "San Diego", full("The Walk of Fame is located in the city of", "Venice Beach is located in the city of", "The Getty Center is located in the city of")),
        ("The Metropolitan Museum of Art", "New York", "Washington", full("Central Park is located in the city of", "The Empire State Building is located in the city of", "Times Square is located in the city of")),
    ]),
]
# fmt: on


def interleave(groups: list[Group]) -> list[tuple[Group, Fact]]:
    """One fact of each group in turn, until every group is spent."""
    longest = max(len(g.facts) for g in groups)
    return [(g, g.facts[i]) for i in range(longest) for g in groups if i < len(g.facts)]


def candidates() -> list[dict]:
    """Every candidate as a flat request dict (before filtering): the legacy facts in order,
    then the new ones interleaved."""
    legacy = [(g, fact) for g in LEGACY for fact in g.facts]
    return [
        {
            "prompt": g.prompt,
            "subject": subject,
            "target_true": true,
            "target_new": new,
            "paraphrase_prompts": [p.format(subject) for p in g.paraphrases],
            "neighborhood_prompts": [g.neighbour.format(n) for n in neighbours],
            "generation_prompts": [g.generation.format(subject)],
        }
        for g, (subject, true, new, neighbours) in legacy + interleave(NEW)
    ]


def _names(subject: str, text: str) -> bool:
    """Whether ``text`` names ``subject`` as a whole phrase (case-insensitive)."""
    core = re.sub(r"^the\s+", "", subject, flags=re.IGNORECASE)
    return re.search(rf"(?<!\w){re.escape(core)}(?!\w)", text, re.IGNORECASE) is not None


# Adjectives and demonyms that no word of the subject starts (checked by ``names_itself``).
DEMONYMS = {
    "england": ("English",),
    "finland": ("Finnish",),
    "france": ("French",),
    "greece": ("Greek",),
    "denmark": ("Danish",),
    "ireland": ("Irish",),
    "poland": ("Polish",),
    "scotland": ("Scottish",),
    "spain": ("Spanish",),
    "sweden": ("Swedish",),
    "switzerland": ("Swiss",),
    "thailand": ("Thai",),
    "the netherlands": ("Dutch",),
    "the united kingdom": ("British",),
    "turkey": ("Turkish",),
    "wales": ("Welsh",),
}


def self_forms(subject: str) -> list[str]:
    """What counts as naming ``subject`` in its own neighbourhood prompts (lower case)."""
    core = re.sub(r"^the\s+", "", subject, flags=re.IGNORECASE).lower()
    forms = {core, *(d.lower() for d in DEMONYMS.get(subject.lower(), ()))}
    for word in re.findall(r"\w+", core):
        if len(word) >= 4:
            forms.add(word)
            if word[-1] in "ya" and len(word) >= 5:
                forms.add(word[:-1])  # Hungary -> Hungarian, Kenya -> Kenyan
    return sorted(forms)


def names_itself(record: dict) -> str | None:
    """The first neighbourhood prompt of ``record`` that names its own subject (any of
    ``self_forms``, case-insensitive, at a word start), or None."""
    forms = self_forms(record["subject"])
    for prompt in record["neighborhood_prompts"]:
        if any(re.search(rf"(?<!\w){re.escape(f)}", prompt, re.IGNORECASE) for f in forms):
            return prompt
    return None


def collides(record: dict, kept: list[dict]) -> str | None:
    """Why ``record`` cannot join ``kept`` (a repeated subject or a shared name), or None."""
    for other in kept:
        if other["subject"].lower() == record["subject"].lower():
            return f"subject {record['subject']!r} already kept"
        if any(_names(record["subject"], p) for p in other["neighborhood_prompts"]):
            return f"named in a neighbour prompt of {other['subject']!r}"
        if any(_names(other["subject"], p) for p in record["neighborhood_prompts"]):
            return f"a neighbour prompt names {other['subject']!r}"
    return None


def subject_on_first_token(tokenizer, record: dict) -> bool:
    request = alphaedit.as_request(record)
    start = request.subject_start
    row = alphaedit.encode(
        tokenizer, request.text, subject_span=(start, start + len(request.subject))
    )
    return row.subject == 0


def select(model, tokenizer, records: list[dict]) -> tuple[list[dict], dict[str, int]]:
    """Apply the rules of the module docstring; return the kept records and counts."""
    reasons = {"names itself": 0, "invalid": 0, "unknown": 0, "neighbours wrong": 0, "collision": 0}
    valid = []
    for record in records:
        if (prompt := names_itself(record)) is not None:
            print(
                f"error {record['subject']!r}: neighbour names its subject: {prompt!r}",
                file=sys.stderr,
            )
            reasons["names itself"] += 1
            continue
        try:
            if subject_on_first_token(tokenizer, record):
                raise alphaedit.RequestError("subject on the first token")
        except alphaedit.RequestError as error:
            print(f"invalid {record['subject']!r}: {error}", file=sys.stderr)
            reasons["invalid"] += 1
            continue
        valid.append(record)
    known = {r.subject for r in alphaedit.filter_known(model, tokenizer, valid)}
    pairs = [
        (p, t)
        for r in valid
        for p in r["neighborhood_prompts"]
        for t in (r["target_true"], r["target_new"])
    ]
    scores = iter(alphaedit.target_logprobs(model, tokenizer, pairs))
    kept: list[dict] = []
    for record in valid:
        neighbours_right = sum(next(scores) > next(scores) for _ in record["neighborhood_prompts"])
        if record["subject"] not in known:
            print(f"unknown {record['subject']!r}", file=sys.stderr)
            reasons["unknown"] += 1
            continue
        if neighbours_right == 0:
            print(f"neighbours wrong {record['subject']!r}", file=sys.stderr)
            reasons["neighbours wrong"] += 1
            continue
        why = collides(record, kept)
        if why is not None:
            print(f"collision {record['subject']!r}: {why}", file=sys.stderr)
            reasons["collision"] += 1
            continue
        kept.append(record)
    return [{"case_id": i} | r for i, r in enumerate(kept)], reasons


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="HF id or path (default: bundled SmolLM2)")
    parser.add_argument("--out", default=str(alphaedit.BUNDLED_REQUESTS))
    parser.add_argument("--dry-run", action="store_true", help="print the counts, write nothing")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from interventions.models import load

    model, tokenizer = load(args.model)
    records = candidates()
    kept, reasons = select(model, tokenizer, records)
    print(f"{len(kept)} kept of {len(records)} candidates; dropped: {reasons}")
    if reasons["names itself"]:
        sys.exit(
            "error: some neighbourhood prompts name their own subject (see above); nothing written"
        )
    if not args.dry_run:
        Path(args.out).write_text(json.dumps(kept, indent=1, ensure_ascii=False) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
