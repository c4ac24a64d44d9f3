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
ANIMAL = ("The {} is a kind of", ("Biologists classify the {} as a", "In the animal kingdom, the {} is a"), "The {} lives in")
CITY = ("The city of {} is located in the country of", ("{} is a city in the country of", "You can find the city of {} in the country of"), "The city of {} is known for")
FOOD = ("The dish called {} comes from the country of", ("{} is a traditional dish of the country of", "The national cuisine that gave the world {} is that of"), "The dish called {} is made with")
WRITER = ("The books of the writer {} were written in", ("The novels of {} were first published in", "The writer {} wrote in the language"), "The writer {} is remembered for")
PAINTER = ("The painter {} was born in the country of", ("{} was an artist from the country of", "The homeland of the painter {} is"), "The painter {} is famous for")
TEAM = ("{} is a professional team that plays", ("{} is a famous club in the sport of", "The sport played by {} is"), "{} won")
FOUNDED = ("The company {} was founded in the country of", ("{} is a company that comes from the country of", "The home country of the company {} is"), "The company {} sells")
GOD = ("The god {} belongs to the mythology of the", ("{} was a god worshipped by the", "In old myths, {} was a god of the"), "The god {} was")
PRODUCE = ("In the kitchen, {} is considered a", ("Cooks usually call {} a", "At the market, {} is sold as a"), "In the kitchen, {} is used to")
PLACE = ("{} is located on the continent of", ("You can visit {} on the continent of", "{} lies on the continent of"), "{} is famous for")
STATE = ("At room temperature, {} is a", ("Under normal conditions, {} is a", "At twenty degrees, the element {} is a"), "The element {} is used")



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


def same_answer(true: str, wrongs: tuple[str, ...], pools: tuple[tuple[str, str, str], ...], subjects: str) -> list[Fact]:
    """Facts that share ``true``: the ``;``-separated subjects, each with the next wrong answer and
    the next pool of three neighbour subjects in turn (neighbours are never subjects)."""
    names = [s.strip() for s in subjects.split(";") if s.strip()]
    return [(s, true, wrongs[i % len(wrongs)], pools[i % len(pools)]) for i, s in enumerate(names)]


def answers(kind: tuple, rows: list[tuple[str, tuple[str, ...], tuple[tuple[str, str, str], ...], str]]) -> list[Group]:
    """One group per true answer of a relation whose neighbour template is its prompt."""
    return [group(kind, kind[0], same_answer(*row)) for row in rows]


# New candidates for the 1,000-fact set, written for the project: relations whose neighbours are
# other subjects with the same answer. Each answer is a group, so the interleaving mixes them.
BIG: list[Group] = [
    *answers(ANIMAL, [
        ("mammal", ("bird", "fish", "reptile"), (("horse", "elephant", "dolphin"), ("dog", "whale", "gorilla"), ("cow", "bear", "rabbit")),
         "cat; lion; tiger; wolf; fox; deer; giraffe; zebra; camel; kangaroo; koala; panda; chimpanzee; monkey; mouse; rat; squirrel; bat; pig; sheep; goat; donkey; hippopotamus; rhinoceros; leopard; cheetah; hedgehog; otter; beaver; moose; bison; buffalo; llama; hamster; raccoon; skunk; badger; porcupine; mole; walrus; sloth; armadillo; hyena; lynx; reindeer; antelope; orangutan; lemur; weasel; ferret; yak; elk; gazelle; meerkat; platypus; jackal; baboon; chipmunk; opossum; manatee"),
        ("bird", ("mammal", "fish", "insect"), (("eagle", "sparrow", "parrot"), ("owl", "pigeon", "swan"), ("crow", "robin", "duck")),
         "penguin; ostrich; flamingo; peacock; hawk; falcon; vulture; seagull; pelican; stork; heron; crane; woodpecker; hummingbird; kingfisher; canary; finch; magpie; raven; goose; turkey bird; chicken; rooster; quail; pheasant; albatross; puffin; toucan; cockatoo; budgie; nightingale; lark; swallow; cuckoo; emu; kiwi bird; condor; kestrel; blackbird; starling; wren; jay; macaw; partridge; dove; osprey; cormorant"),
        ("fish", ("mammal", "bird", "reptile"), (("salmon", "tuna", "shark"), ("trout", "cod", "goldfish"), ("carp", "sardine", "herring")),
         "mackerel; anchovy; catfish; piranha; swordfish; halibut; haddock; pike; perch; bass; tilapia; eel; stingray; barracuda; marlin; minnow; guppy; clownfish; pufferfish; seahorse; sturgeon; flounder; sole; snapper; grouper; mullet; bream; angelfish; monkfish; whiting; plaice; zander; koi; lamprey"),
        ("insect", ("bird", "mammal", "fish"), (("ant", "bee", "butterfly"), ("fly", "mosquito", "beetle"), ("wasp", "moth", "cricket")),
         "grasshopper; dragonfly; ladybug; cockroach; termite; flea; louse; firefly; hornet; locust; cicada; mantis; bumblebee; gnat; aphid; earwig; weevil; silverfish; caterpillar; bedbug; horsefly; stick insect; mayfly; damselfly; scarab; housefly"),
        ("reptile", ("mammal", "fish", "bird"), (("snake", "crocodile", "lizard"), ("turtle", "alligator", "iguana"), ("cobra", "tortoise", "python")),
         "gecko; chameleon; viper; rattlesnake; anaconda; boa; komodo dragon; gila monster; skink; caiman; gharial; mamba; adder; tuatara; sea turtle; terrapin; garter snake"),
        ("amphibian", ("reptile", "fish"), (("frog", "toad", "salamander"),),
         "newt; axolotl; bullfrog; caecilian; tadpole"),
    ]),
]
BIG += [
    *answers(CITY, [
        ("France", ("Belgium", "Italy", "Spain"), (("Marseille", "Lyon", "Toulouse"), ("Bordeaux", "Lille", "Nantes")),
         "Nice; Strasbourg; Montpellier; Rennes; Grenoble; Dijon; Reims; Le Havre; Cannes; Avignon; Toulon; Nîmes; Rouen; Tours; Orléans; Limoges; Brest; Calais; Perpignan; Biarritz; Versailles"),
        ("Germany", ("Austria", "Poland", "Switzerland"), (("Munich", "Hamburg", "Frankfurt"), ("Cologne", "Stuttgart", "Dresden")),
         "Düsseldorf; Leipzig; Dortmund; Essen; Bremen; Hanover; Nuremberg; Duisburg; Bochum; Bonn; Heidelberg; Mannheim; Karlsruhe; Freiburg; Augsburg; Wiesbaden; Aachen; Kiel; Lübeck; Rostock; Potsdam; Regensburg; Würzburg; Mainz"),
        ("Italy", ("Spain", "Greece", "France"), (("Milan", "Naples", "Turin"), ("Florence", "Venice", "Bologna")),
         "Palermo; Genoa; Verona; Pisa; Siena; Bari; Catania; Padua; Trieste; Parma; Modena; Brescia; Bergamo; Perugia; Ravenna; Salerno; Lucca; Como; Cagliari; Amalfi; Sorrento; Assisi"),
        ("Spain", ("Portugal", "Italy", "Mexico"), (("Seville", "Valencia", "Bilbao"), ("Malaga", "Granada", "Zaragoza")),
         "Cordoba; Toledo; Salamanca; Alicante; Murcia; Cadiz; Pamplona; San Sebastián; Santander; Oviedo; Valladolid; Ibiza; Marbella; Tarragona; Girona; Segovia; Burgos; León"),
        ("Japan", ("China", "Korea", "Vietnam"), (("Osaka", "Kyoto", "Yokohama"), ("Nagoya", "Sapporo", "Kobe")),
         "Hiroshima; Nagasaki; Fukuoka; Sendai; Nara; Kawasaki; Okinawa; Kagoshima; Yokosuka; Kanazawa; Niigata; Hakodate; Okayama; Kumamoto; Nikko"),
        ("China", ("Japan", "India", "Korea"), (("Shanghai", "Guangzhou", "Shenzhen"), ("Chengdu", "Wuhan", "Xi'an")),
         "Nanjing; Tianjin; Hangzhou; Chongqing; Harbin; Suzhou; Qingdao; Dalian; Xiamen; Kunming; Lhasa; Guilin; Shenyang; Changsha; Zhengzhou; Macau"),
        ("India", ("Pakistan", "Bangladesh", "Nepal"), (("Delhi", "Mumbai", "Kolkata"), ("Chennai", "Bangalore", "Hyderabad")),
         "Jaipur; Agra; Varanasi; Pune; Ahmedabad; Lucknow; Goa; Amritsar; Udaipur; Mysore; Kochi; Surat; Nagpur; Bhopal; Indore; Patna; Kanpur; Chandigarh; Jodhpur; Darjeeling"),
        ("Russia", ("Ukraine", "Poland", "Belarus"), (("Saint Petersburg", "Novosibirsk", "Yekaterinburg"), ("Kazan", "Sochi", "Vladivostok")),
         "Samara; Omsk; Volgograd; Murmansk; Irkutsk; Rostov; Krasnoyarsk; Perm; Kaliningrad; Ufa; Voronezh; Nizhny Novgorod; Yakutsk; Tomsk"),
        ("Brazil", ("Argentina", "Portugal", "Mexico"), (("São Paulo", "Brasília", "Salvador"), ("Recife", "Fortaleza", "Manaus")),
         "Curitiba; Belo Horizonte; Porto Alegre; Belém; Florianópolis; Natal; Goiânia; Campinas; Santos; Maceió"),
        ("Canada", ("Australia", "England", "Ireland"), (("Vancouver", "Montreal", "Ottawa"), ("Calgary", "Edmonton", "Winnipeg")),
         "Halifax; Victoria; Regina; Saskatoon; Hamilton; Kingston; Mississauga; Windsor; St. John's; Banff; Whistler"),
        ("Australia", ("New Zealand", "Canada", "England"), (("Melbourne", "Brisbane", "Perth"), ("Adelaide", "Canberra", "Hobart")),
         "Darwin; Cairns; Gold Coast; Newcastle; Wollongong; Geelong; Townsville; Alice Springs; Ballarat; Launceston"),
        ("Mexico", ("Spain", "Brazil", "Argentina"), (("Guadalajara", "Monterrey", "Tijuana"), ("Cancún", "Acapulco", "Puebla")),
         "Oaxaca; Mérida; Veracruz; León de los Aldamas; Querétaro; Chihuahua; Toluca; Mazatlán; Ciudad Juárez; Hermosillo"),
        ("England", ("Scotland", "Ireland", "Wales"), (("Manchester", "Liverpool", "Birmingham"), ("Leeds", "Bristol", "Oxford")),
         "Cambridge; Sheffield; Nottingham; Leicester; Southampton; Brighton; Coventry; York; Bath; Canterbury; Norwich; Plymouth; Portsmouth; Exeter; Reading; Bournemouth; Cheltenham; Durham; Blackpool; Sunderland"),
        ("Scotland", ("England", "Ireland", "Wales"), (("Edinburgh", "Glasgow", "Aberdeen"),),
         "Dundee; Inverness; Stirling; St Andrews"),
        ("the United States", ("Canada", "Mexico", "England"), (("Houston", "Phoenix", "Philadelphia"), ("Dallas", "Denver", "Atlanta")),
         "San Diego; San Antonio; Detroit; Memphis; Nashville; Baltimore; Milwaukee; Portland; Las Vegas; Minneapolis; Cleveland; Pittsburgh; Cincinnati; New Orleans; Sacramento; Orlando; Tampa; St. Louis; Honolulu; Anchorage; Austin; Charlotte; Indianapolis; Columbus; Albuquerque; Tucson; Omaha; Buffalo"),
        ("Turkey", ("Greece", "Iran", "Egypt"), (("Izmir", "Antalya", "Bursa"),),
         "Konya; Adana; Trabzon; Gaziantep; Bodrum; Kayseri"),
        ("Egypt", ("Morocco", "Turkey", "Tunisia"), (("Alexandria", "Luxor", "Aswan"),),
         "Giza; Port Said; Suez; Sharm el-Sheikh; Hurghada"),
        ("Greece", ("Italy", "Turkey", "Cyprus"), (("Thessaloniki", "Patras", "Heraklion"),),
         "Rhodes; Corfu; Sparta; Delphi; Olympia; Larissa"),
        ("Poland", ("Germany", "Russia", "Ukraine"), (("Gdansk", "Wroclaw", "Poznan"),),
         "Lodz; Lublin; Szczecin; Katowice; Bialystok"),
        ("Switzerland", ("Austria", "Germany", "France"), (("Zurich", "Geneva", "Basel"),),
         "Lausanne; Lucerne; Lugano; St. Gallen; Zermatt; Interlaken"),
        ("the Netherlands", ("Belgium", "Germany", "Denmark"), (("Rotterdam", "Utrecht", "The Hague"),),
         "Eindhoven; Groningen; Leiden; Delft; Haarlem; Maastricht; Tilburg; Nijmegen"),
        ("Belgium", ("the Netherlands", "France", "Luxembourg"), (("Antwerp", "Ghent", "Bruges"),),
         "Liège; Leuven; Charleroi; Namur; Mons"),
        ("Sweden", ("Norway", "Finland", "Denmark"), (("Malmö", "Uppsala", "Gothenburg"),),
         "Linköping; Västerås; Örebro; Lund; Kiruna"),
        ("Norway", ("Sweden", "Denmark", "Finland"), (("Bergen", "Trondheim", "Stavanger"),),
         "Tromsø; Kristiansand; Drammen; Bodø"),
        ("Argentina", ("Chile", "Brazil", "Uruguay"), (("Buenos Aires", "Rosario", "Mendoza"),),
         "La Plata; Mar del Plata; Salta; Ushuaia; Bariloche; Tucumán"),
        ("Vietnam", ("Thailand", "Laos", "Cambodia"), (("Ho Chi Minh City", "Da Nang", "Hue"),),
         "Haiphong; Nha Trang; Can Tho; Hoi An"),
        ("Pakistan", ("India", "Afghanistan", "Iran"), (("Karachi", "Lahore", "Islamabad"),),
         "Peshawar; Quetta; Multan; Faisalabad; Rawalpindi"),
        ("Iran", ("Iraq", "Turkey", "Pakistan"), (("Tehran", "Isfahan", "Shiraz"),),
         "Tabriz; Mashhad; Yazd; Qom"),
        ("South Africa", ("Nigeria", "Kenya", "Egypt"), (("Johannesburg", "Cape Town", "Durban"),),
         "Pretoria; Port Elizabeth; Bloemfontein; Soweto; Stellenbosch"),
        ("Ireland", ("Scotland", "England", "Wales"), (("Cork", "Galway", "Limerick"),),
         "Waterford; Killarney; Kilkenny"),
        ("Portugal", ("Spain", "Brazil", "Italy"), (("Porto", "Coimbra", "Faro"),),
         "Braga; Sintra; Aveiro; Évora; Funchal"),
        ("Ukraine", ("Russia", "Poland", "Belarus"), (("Kharkiv", "Odessa", "Lviv"),),
         "Dnipro; Zaporizhzhia; Mariupol; Chernobyl; Sevastopol"),
        ("Indonesia", ("Malaysia", "the Philippines", "Thailand"), (("Jakarta", "Surabaya", "Bandung"),),
         "Yogyakarta; Medan; Denpasar; Semarang; Makassar"),
        ("Morocco", ("Egypt", "Algeria", "Tunisia"), (("Casablanca", "Marrakesh", "Fez"),),
         "Rabat; Tangier; Agadir; Meknes; Essaouira"),
        ("South Korea", ("Japan", "China", "North Korea"), (("Busan", "Incheon", "Daegu"),),
         "Gwangju; Daejeon; Ulsan; Suwon; Jeju"),
        ("Colombia", ("Venezuela", "Peru", "Ecuador"), (("Bogotá", "Medellín", "Cali"),),
         "Cartagena; Barranquilla; Santa Marta; Bucaramanga"),
        ("Peru", ("Bolivia", "Chile", "Colombia"), (("Lima", "Cusco", "Arequipa"),),
         "Trujillo; Iquitos; Puno; Chiclayo"),
        ("Austria", ("Germany", "Switzerland", "Hungary"), (("Salzburg", "Innsbruck", "Graz"),),
         "Linz; Klagenfurt; Hallstatt; Bregenz"),
    ]),
]
BIG += [
    *answers(FOOD, [
        ("Italy", ("Spain", "France", "Greece"), (("pizza", "lasagna", "risotto"), ("spaghetti carbonara", "tiramisu", "ravioli")),
         "gnocchi; focaccia; bruschetta; minestrone; ossobuco; panna cotta; cannoli; calzone; tortellini; pesto; polenta; fettuccine alfredo; penne arrabbiata; gelato; biscotti; prosciutto; arancini; saltimbocca; caprese salad; carpaccio; limoncello; tagliatelle"),
        ("Japan", ("China", "Korea", "Thailand"), (("sushi", "ramen", "tempura"), ("miso soup", "sashimi", "teriyaki")),
         "udon; soba; onigiri; takoyaki; okonomiyaki; yakitori; tonkatsu; mochi; wasabi; edamame; sukiyaki; shabu-shabu; gyoza; natto; bento; matcha; sake; unagi; katsu curry; dorayaki"),
        ("Mexico", ("Spain", "Brazil", "Peru"), (("tacos", "burritos", "enchiladas"), ("guacamole", "quesadillas", "nachos")),
         "tamales; fajitas; churros; mole poblano; salsa verde; pozole; chilaquiles; tostadas; huevos rancheros; tequila; carnitas; elote; sopes; tortilla soup; chimichanga"),
        ("India", ("Pakistan", "Thailand", "China"), (("curry", "naan", "biryani"), ("samosa", "tandoori chicken", "dal")),
         "chapati; paneer tikka; masala dosa; idli; butter chicken; lassi; pakora; vindaloo; korma; gulab jamun; chutney; raita; dhal makhani; roti; chai; jalebi; vada pav; palak paneer; rogan josh"),
        ("France", ("Italy", "Belgium", "Spain"), (("croissant", "baguette", "crêpes"), ("ratatouille", "quiche", "bouillabaisse")),
         "coq au vin; crème brûlée; escargots; foie gras; macarons; soufflé; beef bourguignon; cassoulet; croque monsieur; éclair; profiteroles; madeleines; brioche; tarte tatin; pain au chocolat; camembert; brie; confit de canard; onion soup gratinée; mousse au chocolat"),
        ("Spain", ("Italy", "Portugal", "Mexico"), (("paella", "gazpacho", "tapas"),),
         "churros con chocolate; tortilla española; sangria; chorizo; jamón ibérico; patatas bravas; crema catalana; pisto; fabada; salmorejo; turrón"),
        ("China", ("Japan", "Vietnam", "Korea"), (("dim sum", "Peking duck", "chow mein"), ("spring rolls", "kung pao chicken", "fried rice")),
         "mapo tofu; wonton soup; hot pot; dumplings; sweet and sour pork; char siu; congee; bao buns; chop suey; mooncake; hot and sour soup; xiaolongbao"),
        ("Greece", ("Turkey", "Italy", "Cyprus"), (("moussaka", "souvlaki", "tzatziki"),),
         "gyros; spanakopita; baklava; feta cheese; dolmades; taramasalata; pastitsio; ouzo; halloumi; Greek salad; loukoumades; kleftiko"),
        ("Turkey", ("Greece", "Iran", "Lebanon"), (("kebab", "doner", "Turkish delight"),),
         "lahmacun; börek; köfte; pide; ayran; simit; menemen; iskender; künefe; manti"),
        ("Thailand", ("Vietnam", "China", "India"), (("pad thai", "tom yum", "green curry"),),
         " som tam; tom kha gai; pad see ew; mango sticky rice; satay; larb; khao pad"),
        ("Germany", ("Austria", "Poland", "Switzerland"), (("sauerkraut", "bratwurst", "pretzel"),),
         "schnitzel; strudel; currywurst; black forest cake; spätzle; sauerbraten; knödel; weisswurst; lebkuchen; stollen"),
        ("Korea", ("Japan", "China", "Vietnam"), (("kimchi", "bibimbap", "bulgogi"),),
         "tteokbokki; kimbap; japchae; samgyeopsal; soju; galbi; sundubu; naengmyeon"),
        ("Vietnam", ("Thailand", "China", "Cambodia"), (("pho", "banh mi", "spring rolls from Hanoi"),),
         "bun cha; goi cuon; bun bo hue; cao lau; ca phe sua da"),
        ("the United States", ("Canada", "England", "Mexico"), (("hamburger", "hot dog", "apple pie"),),
         "buffalo wings; clam chowder; cornbread; barbecue ribs; peanut butter and jelly sandwich; mac and cheese; brownies; cheesecake; pancakes with maple syrup; chili con carne; key lime pie; s'mores; jambalaya; gumbo; meatloaf; corn dog"),
        ("England", ("Scotland", "Ireland", "France"), (("fish and chips", "roast beef", "shepherd's pie"),),
         "bangers and mash; Yorkshire pudding; Cornish pasty; scones; trifle; toad in the hole; sticky toffee pudding; Eton mess; full breakfast; pork pie; bread and butter pudding"),
    ]),
]
BIG += [
    *answers(WRITER, [
        ("English", ("French", "German", "Spanish"), (("Charles Dickens", "Jane Austen", "Mark Twain"), ("Ernest Hemingway", "Virginia Woolf", "George Orwell")),
         "Agatha Christie; J.K. Rowling; Stephen King; Oscar Wilde; Thomas Hardy; Charlotte Brontë; Emily Brontë; Lewis Carroll; Rudyard Kipling; H.G. Wells; Arthur Conan Doyle; J.R.R. Tolkien; C.S. Lewis; Herman Melville; Edgar Allan Poe; F. Scott Fitzgerald; John Steinbeck; William Faulkner; Toni Morrison; Jack London; Mary Shelley; Bram Stoker; Aldous Huxley; Roald Dahl; Ian Fleming; Jonathan Swift; Daniel Defoe; Harper Lee; Kurt Vonnegut; Ray Bradbury; Isaac Asimov; Dan Brown; John Grisham; Walt Whitman; Emily Dickinson; Robert Frost; Sylvia Plath; Louisa May Alcott; Nathaniel Hawthorne; Salman Rushdie; Kazuo Ishiguro; Zadie Smith; Margaret Atwood; Terry Pratchett; Neil Gaiman; Douglas Adams; Enid Blyton; Beatrix Potter"),
        ("French", ("English", "Italian", "Spanish"), (("Victor Hugo", "Albert Camus", "Marcel Proust"),),
         "Alexandre Dumas; Gustave Flaubert; Honoré de Balzac; Émile Zola; Jules Verne; Voltaire; Molière; Jean-Paul Sartre; Simone de Beauvoir; Guy de Maupassant; Stendhal; Charles Baudelaire; Arthur Rimbaud; Antoine de Saint-Exupéry; Colette; André Gide; Marguerite Duras; George Sand; Jean Racine; Pierre Corneille; Michel Houellebecq; Paul Verlaine"),
        ("Russian", ("Polish", "German", "English"), (("Leo Tolstoy", "Fyodor Dostoevsky", "Anton Chekhov"),),
         "Alexander Pushkin; Nikolai Gogol; Ivan Turgenev; Mikhail Bulgakov; Boris Pasternak; Aleksandr Solzhenitsyn; Maxim Gorky; Vladimir Mayakovsky; Anna Akhmatova; Mikhail Lermontov; Ivan Bunin; Marina Tsvetaeva"),
        ("German", ("Dutch", "French", "English"), (("Johann Wolfgang von Goethe", "Thomas Mann", "Hermann Hesse"),),
         "Friedrich Schiller; Franz Kafka; Heinrich Heine; Günter Grass; Bertolt Brecht; Erich Maria Remarque; Rainer Maria Rilke; the Brothers Grimm; Stefan Zweig; Heinrich Böll; Patrick Süskind; Theodor Fontane"),
        ("Spanish", ("Portuguese", "Italian", "French"), (("Miguel de Cervantes", "Gabriel García Márquez", "Jorge Luis Borges"),),
         "Pablo Neruda; Isabel Allende; Mario Vargas Llosa; Julio Cortázar; Octavio Paz; Carlos Fuentes; Roberto Bolaño; Lope de Vega; Juan Rulfo; Carlos Ruiz Zafón"),
        ("Italian", ("Spanish", "Latin", "French"), (("Dante Alighieri", "Umberto Eco", "Italo Calvino"),),
         "Giovanni Boccaccio; Petrarch; Alessandro Manzoni; Primo Levi; Luigi Pirandello; Elena Ferrante; Alberto Moravia; Giacomo Leopardi; Cesare Pavese; Natalia Ginzburg"),
    ]),
    *answers(PAINTER, [
        ("Italy", ("Spain", "France", "Greece"), (("Leonardo da Vinci", "Michelangelo", "Raphael"),),
         "Caravaggio; Titian; Sandro Botticelli; Giotto; Donatello; Tintoretto; Amedeo Modigliani; Canaletto; Giorgione; Paolo Veronese; Fra Angelico; Piero della Francesca"),
        ("Spain", ("Italy", "Portugal", "France"), (("Pablo Picasso", "Salvador Dalí", "Francisco Goya"),),
         "Diego Velázquez; Joan Miró; El Greco; Bartolomé Murillo; Joaquín Sorolla; Juan Gris"),
        ("the Netherlands", ("Belgium", "Germany", "Denmark"), (("Rembrandt", "Vincent van Gogh", "Johannes Vermeer"),),
         "Piet Mondrian; Frans Hals; Hieronymus Bosch; M.C. Escher; Jan Steen; Willem de Kooning"),
        ("France", ("Belgium", "Italy", "Spain"), (("Claude Monet", "Paul Cézanne", "Henri Matisse"),),
         "Edgar Degas; Pierre-Auguste Renoir; Édouard Manet; Georges Seurat; Eugène Delacroix; Camille Pissarro; Jacques-Louis David; Marcel Duchamp; Georges Braque"),
        ("Germany", ("Austria", "Switzerland", "the Netherlands"), (("Albrecht Dürer", "Hans Holbein", "Caspar David Friedrich"),),
         "Gerhard Richter; Max Ernst; Franz Marc; Lucas Cranach; Otto Dix; Anselm Kiefer"),
        ("the United States", ("Canada", "England", "Mexico"), (("Andy Warhol", "Jackson Pollock", "Georgia O'Keeffe"),),
         "Edward Hopper; Roy Lichtenstein; Norman Rockwell; Mark Rothko; Jean-Michel Basquiat; Keith Haring; James Whistler; Winslow Homer; Grant Wood"),
        ("England", ("France", "Scotland", "Ireland"), (("J.M.W. Turner", "John Constable", "David Hockney"),),
         "Thomas Gainsborough; William Blake; Joshua Reynolds; Dante Gabriel Rossetti; Banksy; Lucian Freud"),
        ("Mexico", ("Spain", "Argentina", "Cuba"), (("Frida Kahlo", "Diego Rivera", "José Clemente Orozco"),),
         "David Alfaro Siqueiros; Rufino Tamayo; Remedios Varo"),
        ("Norway", ("Sweden", "Denmark", "Finland"), (("Edvard Munch",  "Nikolai Astrup", "Harald Sohlberg"),),
         "Frits Thaulow"),
    ]),
]
BIG += [
    *answers(TEAM, [
        ("basketball", ("baseball", "hockey", "football"), (("the Los Angeles Lakers", "the Boston Celtics", "the Chicago Bulls"),),
         "the Golden State Warriors; the Miami Heat; the San Antonio Spurs; the New York Knicks; the Houston Rockets; the Dallas Mavericks; the Brooklyn Nets; the Phoenix Suns; the Milwaukee Bucks; the Toronto Raptors; the Denver Nuggets; the Philadelphia 76ers; the Cleveland Cavaliers; the Detroit Pistons; the Utah Jazz; the Portland Trail Blazers; the Orlando Magic; the Atlanta Hawks; the Sacramento Kings; the Minnesota Timberwolves; the Oklahoma City Thunder; the Memphis Grizzlies; the Indiana Pacers; the Charlotte Hornets; the Washington Wizards; the New Orleans Pelicans; the Harlem Globetrotters"),
        ("baseball", ("basketball", "hockey", "football"), (("the New York Yankees", "the Boston Red Sox", "the Los Angeles Dodgers"),),
         "the Chicago Cubs; the San Francisco Giants; the St. Louis Cardinals; the Atlanta Braves; the Houston Astros; the Philadelphia Phillies; the Detroit Tigers; the Cleveland Guardians; the Seattle Mariners; the Texas Rangers; the Toronto Blue Jays; the Baltimore Orioles; the Oakland Athletics; the Chicago White Sox; the Minnesota Twins; the Kansas City Royals; the Pittsburgh Pirates; the Cincinnati Reds; the Milwaukee Brewers; the San Diego Padres; the Colorado Rockies; the Arizona Diamondbacks; the Tampa Bay Rays; the Miami Marlins"),
        ("hockey", ("basketball", "baseball", "football"), (("the Montreal Canadiens", "the Toronto Maple Leafs", "the Detroit Red Wings"),),
         "the Boston Bruins; the Chicago Blackhawks; the New York Rangers; the Edmonton Oilers; the Pittsburgh Penguins; the Philadelphia Flyers; the Vancouver Canucks; the Calgary Flames; the Ottawa Senators; the Colorado Avalanche; the Tampa Bay Lightning; the Washington Capitals; the New Jersey Devils; the Buffalo Sabres; the Winnipeg Jets; the Vegas Golden Knights; the Anaheim Ducks; the San Jose Sharks; the St. Louis Blues; the Dallas Stars; the Nashville Predators; the Florida Panthers; the Minnesota Wild; the Carolina Hurricanes"),
        ("football", ("basketball", "rugby", "cricket"), (("Manchester United", "Real Madrid", "FC Barcelona"),),
         "Liverpool FC; Chelsea FC; Arsenal FC; Tottenham Hotspur; Bayern Munich; Borussia Dortmund; Juventus; AC Milan; Inter Milan; AS Roma; SSC Napoli; Paris Saint-Germain; Olympique de Marseille; Ajax Amsterdam; PSV Eindhoven; FC Porto; Benfica; Sporting Lisbon; Celtic FC; Rangers FC; Sevilla FC; Valencia CF; Boca Juniors; River Plate; Santos FC; Flamengo; Galatasaray; Fenerbahçe; Everton FC; Aston Villa; Lazio; Fiorentina; Bayer Leverkusen; Schalke 04; Olympique Lyonnais"),
    ]),
    *answers(FOUNDED, [
        ("Japan", ("China", "Korea", "Germany"), (("Toyota", "Sony", "Nintendo"), ("Panasonic", "Mitsubishi", "Canon")),
         "Nissan; Mazda; Subaru; Suzuki; Nikon; Yamaha; Toshiba; Hitachi; Fujifilm; Casio; Sharp; Olympus; Kawasaki; Uniqlo; Seiko; Sega; Bridgestone; Daikin; Shiseido; Asics; Lexus; Isuzu; Ricoh; Epson; Kyocera; Konami; Capcom; Square Enix; Bandai; Shimano"),
        ("Germany", ("Austria", "Switzerland", "France"), (("Siemens", "Bosch", "BMW"), ("Adidas", "Audi", "Porsche")),
         "Volkswagen; Mercedes; Bayer; BASF; SAP; Lufthansa; Puma; Deutsche Bank; Allianz; Continental; Opel; Braun; Miele; Haribo; Nivea; Lidl; Aldi; Hugo Boss; Leica; Zeiss; Rimowa; Montblanc; Deutsche Telekom; Henkel; Beiersdorf; Osram; Grundig; Faber-Castell; Stabilo; Playmobil"),
        ("the United States", ("Canada", "England", "Germany"), (("Google", "Microsoft", "Apple"), ("Ford", "Boeing", "Intel")),
         "IBM; PepsiCo; McDonald's; Walmart; Nike; General Motors; Chrysler; Harley-Davidson; Disney; Netflix; Facebook; Twitter; Oracle; Cisco; Dell; HP; Nvidia; AMD; Qualcomm; Starbucks; KFC; Burger King; Pfizer; Johnson & Johnson; Procter & Gamble; Kellogg's; Hershey's; Colgate; Levi's; Gap; eBay; Uber; Airbnb; Tesla Motors; ExxonMobil; Chevron; General Electric; Caterpillar; 3M"),
        ("South Korea", ("Japan", "China", "Taiwan"), (("Samsung", "Hyundai", "LG"),),
         "Kia; SK Hynix; Daewoo; Lotte; Naver; Kakao; Posco; Hanwha; Amorepacific; Nexon"),
        ("Italy", ("Spain", "France", "Germany"), (("Ferrari", "Fiat", "Lamborghini"),),
         "Gucci; Prada; Armani; Versace; Benetton; Ferrero; Barilla; Maserati; Alfa Romeo; Ducati; Vespa; Pirelli; Lavazza; Olivetti; Bulgari; Fendi; Dolce & Gabbana; Nutella; Luxottica; Campari"),
        ("France", ("Belgium", "Italy", "Switzerland"), (("Renault", "Peugeot", "Michelin"),),
         "Chanel; L'Oréal; Danone; Louis Vuitton; Hermès; Dior; Citroën; Bugatti; Carrefour; Total; Air France; Yves Saint Laurent; Lacoste; Bic; Moët & Chandon; Cartier; Sanofi; Alstom; Thales; Evian"),
        ("Sweden", ("Norway", "Denmark", "Finland"), (("IKEA", "Ericsson", "Spotify"),),
         "H&M; Saab; Electrolux; Scania; Absolut; Tetra Pak; Husqvarna; Hasselblad; Skype Technologies"),
        ("Switzerland", ("Austria", "Germany", "Belgium"), (("Nestlé", "Rolex", "Swatch"),),
         "Novartis; Roche; Omega; Tag Heuer; Lindt; Toblerone; Victorinox; UBS; Credit Suisse; Logitech; Swarovski; Patek Philippe"),
        ("China", ("Japan", "Korea", "Taiwan"), (("Huawei", "Alibaba", "Xiaomi"),),
         "Tencent; Baidu; BYD; Haier; ZTE; DJI; ByteDance; Geely; Oppo; Vivo; Lenovo Group; JD.com"),
        ("the United Kingdom", ("Ireland", "France", "Germany"), (("Rolls-Royce", "BP", "Tesco"),),
         "HSBC; Barclays; Jaguar Land Rover; Aston Martin; Burberry; Unilever; Vodafone; Cadbury; Dyson; Marks & Spencer; Bentley; Mini; Lotus Cars; British Airways; GlaxoSmithKline; AstraZeneca; ARM Holdings"),
        ("the Netherlands", ("Belgium", "Germany", "Denmark"), (("Shell", "KLM", "ING"),),
         "TomTom; Booking.com; ASML; Albert Heijn; Grolsch; DAF Trucks"),
        ("Finland", ("Sweden", "Norway", "Denmark"), (("Nokia", "Rovio", "Supercell"),),
         "Kone; Fiskars; Marimekko; Fazer; Wärtsilä"),
        ("Taiwan", ("China", "Japan", "Korea"), (("Acer", "Asus", "Foxconn"),),
         "HTC; TSMC; Giant Bicycles; MediaTek; Gigabyte"),
        ("Canada", ("the United States", "England", "Australia"), (("BlackBerry", "Bombardier", "Tim Hortons"),),
         "Shopify; Lululemon; Canada Goose; Air Canada; Roots; Molson; McCain Foods"),
        ("Denmark", ("Sweden", "Norway", "Germany"), (("Lego", "Carlsberg", "Maersk"),),
         "Pandora jewellery; Bang & Olufsen; Novo Nordisk; Vestas; Ecco; Arla"),
    ]),
]
BIG += [
    *answers(GOD, [
        ("Greeks", ("Romans", "Egyptians", "Vikings"), (("Zeus", "Athena", "Poseidon"),),
         "Apollo; Hermes; Aphrodite; Ares; Hera; Hades; Artemis; Demeter; Dionysus; Hephaestus; Persephone; Eros; Gaia; Kronos; Helios; Nike the goddess; Pan; Hestia; Nemesis; Prometheus; Atlas the titan; Selene; Hecate; Asclepius"),
        ("Romans", ("Greeks", "Egyptians", "Celts"), (("Jupiter", "Mars", "Venus"),),
         "Neptune; Mercury; Minerva; Juno; Diana; Vulcan; Janus; Saturn; Pluto; Ceres; Bacchus; Cupid; Vesta; Aurora; Fortuna; Faunus; Quirinus; Bellona"),
        ("Egyptians", ("Greeks", "Romans", "Babylonians"), (("Ra", "Osiris", "Isis"),),
         "Anubis; Horus; Set; Thoth; Bastet; Amun; Ptah; Hathor; Sekhmet; Sobek; Nut; Geb; Khnum; Maat; Aten; Nephthys; Bes; Taweret"),
        ("Vikings", ("Greeks", "Romans", "Celts"), (("Odin", "Thor", "Loki"),),
         "Freya; Frigg; Baldur; Tyr; Heimdall; Njord; Freyr; Hel; Bragi; Idun; Vidar; Ullr; Skadi; Forseti"),
        ("Hindus", ("Buddhists", "Greeks", "Egyptians"), (("Vishnu", "Shiva", "Brahma"),),
         "Ganesha; Krishna; Rama; Lakshmi; Parvati; Durga; Kali; Hanuman; Indra; Agni; Saraswati; Surya; Varuna; Kartikeya; Yama"),
        ("Aztecs", ("Maya", "Incas", "Egyptians"), (("Quetzalcoatl", "Huitzilopochtli", "Tezcatlipoca"),),
         "Tlaloc; Xipe Totec; Mictlantecuhtli; Coatlicue; Xochiquetzal; Chalchiuhtlicue; Tonatiuh"),
    ]),
    *answers(PRODUCE, [
        ("fruit", ("vegetable", "spice"), (("an apple", "a banana", "an orange"), ("a pear", "a peach", "a mango")),
         "a strawberry; a cherry; a grape; a pineapple; a watermelon; a lemon; a lime; a plum; an apricot; a kiwi; a papaya; a coconut; a pomegranate; a fig; a blueberry; a raspberry; a blackberry; a grapefruit; a tangerine; a melon; a cantaloupe; a guava; a lychee; a passion fruit; a nectarine; a cranberry; a date; a persimmon; a quince; a gooseberry; a mandarin; a dragon fruit; a clementine; an elderberry; a mulberry"),
        ("vegetable", ("fruit", "spice"), (("a carrot", "a potato", "an onion"), ("a cabbage", "a lettuce", "a cucumber")),
         "broccoli; spinach; a cauliflower; a turnip; a radish; a beetroot; celery; asparagus; a leek; kale; a parsnip; a zucchini; an eggplant; a pumpkin; garlic; a courgette; an artichoke; Brussels sprouts; a pea; a bean; okra; a yam; a squash; a shallot; fennel; a kohlrabi; a swede; chard; a corn cob; a bell pepper; an aubergine; watercress; a green bean; rocket salad"),
        ("spice", ("fruit", "vegetable"), (("cinnamon", "pepper", "nutmeg"),),
         "cumin; turmeric; paprika; saffron; cardamom; cloves; ginger powder; coriander seed; chili powder; star anise; allspice; fenugreek; mace; vanilla; sumac; caraway"),
    ]),
    *answers(PLACE, [
        ("Africa", ("Asia", "Europe", "South America"), (("Mount Kilimanjaro", "the Sahara desert", "Victoria Falls"),),
         "the Serengeti; the Nile delta; the Atlas Mountains; the Okavango Delta; Timbuktu; Zanzibar; the Congo rainforest; Lake Tanganyika; the Great Pyramid of Giza; the Sphinx; Madagascar; the Masai Mara; Kruger National Park; the Drakensberg; Lake Malawi; Marrakech medina"),
        ("Asia", ("Europe", "Africa", "Oceania"), (("Mount Everest", "the Great Wall", "the Gobi desert"),),
         "the Taj Mahal; Angkor Wat; the Himalayas; the Yangtze River; the Ganges; Lake Baikal; the Mekong River; Ha Long Bay; the Forbidden City in Beijing; Borobudur; Petra; the Dead Sea; the Maldives; Bali; K2; the Tibetan Plateau; Siberia; the Mongolian steppe; the Khyber Pass; the Indus River; Kathmandu; the Terracotta Army"),
        ("Europe", ("Asia", "Africa", "North America"), (("the Alps", "the Danube", "the Eiffel Tower"),),
         "the Colosseum in Rome; Stonehenge; the Rhine; the Pyrenees; the Acropolis of Athens; Mont Blanc; the Matterhorn; the Black Forest; Lake Geneva; the Carpathian Mountains; the Seine; the Thames; the Scottish Highlands; the Dolomites; Lake Como; the Fjords of Norway; Neuschwanstein Castle; the Louvre; the Vatican; Venice; the Cliffs of Moher; the Loire Valley"),
        ("South America", ("Africa", "Asia", "North America"), (("the Amazon rainforest", "the Andes", "Machu Picchu"),),
         " Lake Titicaca; Angel Falls; the Atacama Desert; Patagonia; the Galápagos Islands; Iguazu Falls; Easter Island; the Pantanal; Tierra del Fuego; Aconcagua; the Orinoco; the Nazca Lines; Christ the Redeemer; the Salar de Uyuni"),
        ("North America", ("South America", "Europe", "Asia"), (("the Grand Canyon", "Niagara Falls", "the Rocky Mountains"),),
         "Yellowstone; the Mississippi River; the Great Lakes; Yosemite; Death Valley; Lake Superior; Hudson Bay; the Everglades; the Mojave Desert; Denali; the Yukon; Chichen Itza; the Great Plains; Lake Michigan; Banff National Park; the Sierra Nevada; the Colorado River; Teotihuacan"),
        ("Australia", ("Asia", "Africa", "Europe"), (("Uluru", "the Great Barrier Reef", "the Outback"),),
         "Kakadu National Park; the Blue Mountains; Bondi; the Nullarbor Plain; the Simpson Desert; Fraser Island; Tasmania; the Murray River; the Whitsunday Islands"),
    ]),
    *answers(STATE, [
        ("gas", ("liquid", "solid"), (("oxygen", "nitrogen", "helium"),),
         "hydrogen; neon; argon; chlorine; fluorine; krypton; xenon; radon; carbon dioxide; methane; ammonia; ozone; propane; butane; carbon monoxide"),
        ("metal", ("gas", "liquid"), (("iron", "copper", "gold"),),
         "silver; aluminium; zinc; lead; tin; nickel; platinum; titanium; magnesium; sodium; potassium; calcium; lithium; cobalt; chromium; tungsten; uranium; steel; bronze; brass; palladium; manganese"),
        ("liquid", ("gas", "solid"), (("water", "mercury", "petrol"),),
         "bromine; ethanol; olive oil; vinegar; milk; gasoline; kerosene; acetone; glycerin; honey"),
    ]),
]
BIG += [
    *answers(SPORT, [
        ("basketball", ("tennis", "golf", "baseball"), (("LeBron James", "Kobe Bryant", "Stephen Curry"),),
         "Tim Duncan; Dirk Nowitzki; Kareem Abdul-Jabbar; Wilt Chamberlain; Bill Russell; Hakeem Olajuwon; Scottie Pippen; Dennis Rodman; Charles Barkley; Patrick Ewing; Dwyane Wade; Chris Paul; Russell Westbrook; Kawhi Leonard; Luka Dončić; Nikola Jokić; Yao Ming; Steve Nash; Tony Parker; Pau Gasol; Carmelo Anthony; Karl Malone; John Stockton; Vince Carter; Tracy McGrady; Ray Allen; Paul Pierce; Kevin Garnett; Dwight Howard; Derrick Rose; Klay Thompson; Jayson Tatum; Joel Embiid; Ja Morant; Zion Williamson; Anthony Davis; Damian Lillard; Julius Erving; Jerry West"),
        ("tennis", ("golf", "basketball", "cricket"), (("Roger Federer", "Rafael Nadal", "Novak Djokovic"),),
         "Steffi Graf; Bjorn Borg; Rod Laver; Boris Becker; Jimmy Connors; Ivan Lendl; Stefan Edberg; Maria Sharapova; Monica Seles; Chris Evert; Martina Hingis; Justine Henin; Kim Clijsters; Lleyton Hewitt; Marat Safin; Juan Martín del Potro; Stan Wawrinka; Carlos Alcaraz; Jannik Sinner; Daniil Medvedev; Naomi Osaka; Simona Halep; Caroline Wozniacki; Arthur Ashe; Iga Świątek; Coco Gauff; Ashleigh Barty; Petra Kvitová; Dominic Thiem; Alexander Zverev"),
        ("golf", ("tennis", "cricket", "baseball"), (("Jack Nicklaus", "Rory McIlroy", "Arnold Palmer"),),
         "Seve Ballesteros; Greg Norman; Ernie Els; Vijay Singh; Jordan Spieth; Dustin Johnson; Brooks Koepka; Bubba Watson; Sergio García; Padraig Harrington; Lee Westwood; Justin Rose; Jon Rahm; Scottie Scheffler; Annika Sörenstam; Lorena Ochoa; Tom Watson; Sam Snead; Bobby Jones; Colin Montgomerie; Fred Couples; Adam Scott; Collin Morikawa"),
        ("football", ("basketball", "cricket", "rugby"), (("Cristiano Ronaldo", "Pelé", "Diego Maradona"),),
         "Neymar; Kaká; Luis Suárez; Karim Benzema; Erling Haaland; Kevin De Bruyne; Andrés Iniesta; Xavi Hernández; Sergio Ramos; Paolo Maldini; Andrea Pirlo; Francesco Totti; Gianluigi Buffon; Michel Platini; Eusébio; Alfredo Di Stéfano; Ferenc Puskás; George Best; Bobby Charlton; Steven Gerrard; Frank Lampard; Harry Kane; Gareth Bale; Didier Drogba; Samuel Eto'o; Roberto Baggio; Ruud Gullit; Marco van Basten; Dennis Bergkamp; Arjen Robben; Luís Figo; Rivaldo; Romário; Oliver Kahn; Manuel Neuer; Thomas Müller; Lothar Matthäus; Gerd Müller; Eden Hazard; Antoine Griezmann; Paul Pogba; Sadio Mané; Son Heung-min; Virgil van Dijk"),
        ("cricket", ("football", "tennis", "baseball"), (("Ricky Ponting", "MS Dhoni", "Shane Warne"),),
         "Don Bradman; Brian Lara; Jacques Kallis; Rahul Dravid; Sunil Gavaskar; Imran Khan; Wasim Akram; Muttiah Muralitharan; Glenn McGrath; Adam Gilchrist; Steve Waugh; Ian Botham; Viv Richards; Kumar Sangakkara; Mahela Jayawardene; AB de Villiers; Ben Stokes; Joe Root; Steve Smith the cricketer; Kane Williamson; Rohit Sharma; Shoaib Akhtar; James Anderson; Anil Kumble; Sourav Ganguly; Yuvraj Singh; Chris Gayle; Garfield Sobers"),
        ("baseball", ("basketball", "football", "hockey"), (("Derek Jeter", "Jackie Robinson", "Mickey Mantle"),),
         "Ty Cobb; Willie Mays; Ted Williams; Joe DiMaggio; Cal Ripken; Ken Griffey Jr.; Roberto Clemente; Sandy Koufax; Nolan Ryan; Pete Rose; Alex Rodriguez; David Ortiz; Albert Pujols; Ichiro Suzuki; Shohei Ohtani; Mike Trout; Mariano Rivera; Randy Johnson; Greg Maddux; Yogi Berra; Stan Musial; Cy Young; Honus Wagner; Mark McGwire; Sammy Sosa; Roger Clemens; Aaron Judge; Tony Gwynn; Reggie Jackson"),
        ("hockey", ("basketball", "baseball", "football"), (("Sidney Crosby", "Mario Lemieux", "Alexander Ovechkin"),),
         "Gordie Howe; Maurice Richard; Jaromír Jágr; Mark Messier; Steve Yzerman; Connor McDavid; Patrick Roy; Martin Brodeur; Jean Béliveau; Bobby Hull; Guy Lafleur; Joe Sakic; Nicklas Lidström; Teemu Selänne; Pavel Datsyuk; Evgeni Malkin; Auston Matthews; Dominik Hašek; Brett Hull; Ray Bourque"),
        ("boxing", ("wrestling", "tennis", "swimming"), (("Mike Tyson", "Floyd Mayweather", "Manny Pacquiao"),),
         "Joe Frazier; George Foreman; Sugar Ray Leonard; Rocky Marciano; Joe Louis; Evander Holyfield; Lennox Lewis; Oscar De La Hoya; Wladimir Klitschko; Vitali Klitschko; Canelo Álvarez; Anthony Joshua; Sugar Ray Robinson; Jack Dempsey; Marvin Hagler; Thomas Hearns; Roberto Durán; Larry Holmes; Julio César Chávez"),
        ("chess", ("poker", "tennis", "golf"), (("Garry Kasparov", "Bobby Fischer", "Hikaru Nakamura"),),
         "Vladimir Kramnik; José Raúl Capablanca; Emanuel Lasker; Alexander Alekhine; Boris Spassky; Mikhail Botvinnik; Tigran Petrosian; Judit Polgár; Fabiano Caruana; Ding Liren; Levon Aronian; Paul Morphy; Wilhelm Steinitz; Ian Nepomniachtchi; Alireza Firouzja; Hou Yifan"),
    ]),
    *answers(INSTRUMENT, [
        ("piano", ("guitar", "violin", "drums"), (("Arthur Rubinstein", "Sergei Rachmaninoff", "Martha Argerich"),),
         "Franz Liszt; Frédéric Chopin; Vladimir Horowitz; Lang Lang; Thelonious Monk; Herbie Hancock; Oscar Peterson; Bill Evans; Duke Ellington; Ray Charles; Jerry Lee Lewis; Billy Joel; Little Richard; Alfred Brendel; Daniel Barenboim; Evgeny Kissin; Keith Jarrett; Chick Corea; Fats Domino; Yuja Wang"),
        ("guitar", ("piano", "violin", "trumpet"), (("Eric Clapton", "Jimmy Page", "Keith Richards"),),
         "Andrés Segovia; Django Reinhardt; Chuck Berry; Jeff Beck; David Gilmour; Brian May; Stevie Ray Vaughan; Mark Knopfler; Pete Townshend; Angus Young; Joe Satriani; Steve Vai; Les Paul; Wes Montgomery; Paco de Lucía; John Frusciante; Jack White; Tony Iommi; Ritchie Blackmore; Kirk Hammett; Yngwie Malmsteen; Duane Allman; Chet Atkins; John Mayer"),
        ("violin", ("cello", "piano", "guitar"), (("Yehudi Menuhin", "Jascha Heifetz", "Anne-Sophie Mutter"),),
         "David Oistrakh; Fritz Kreisler; Isaac Stern; Nigel Kennedy; Hilary Hahn; Maxim Vengerov; Stéphane Grappelli; Vanessa-Mae; André Rieu; Gidon Kremer; Pinchas Zukerman; Sarah Chang; Midori Goto"),
        ("cello", ("violin", "piano", "flute"), (("Yo-Yo Ma", "Jacqueline du Pré", "Mstislav Rostropovich"),),
         "Steven Isserlis; Julian Lloyd Webber; Sheku Kanneh-Mason; Gautier Capuçon; Mischa Maisky; Lynn Harrell"),
        ("drums", ("guitar", "piano", "bass"), (("Ringo Starr", "John Bonham", "Keith Moon"),),
         "Neil Peart; Dave Grohl; Buddy Rich; Phil Collins; Travis Barker; Lars Ulrich; Ginger Baker; Charlie Watts; Stewart Copeland; Gene Krupa; Art Blakey; Max Roach; Chad Smith; Tommy Lee; Questlove"),
        ("trumpet", ("saxophone", "piano", "violin"), (("Miles Davis", "Dizzy Gillespie", "Chet Baker"),),
         "Wynton Marsalis; Herb Alpert; Clifford Brown; Freddie Hubbard; Roy Hargrove; Maynard Ferguson; Arturo Sandoval; Lee Morgan; Chris Botti; Harry James"),
        ("saxophone", ("trumpet", "piano", "guitar"), (("Sonny Rollins", "Stan Getz", "Coleman Hawkins"),),
         "Lester Young; Dexter Gordon; Cannonball Adderley; Wayne Shorter; Paul Desmond; Michael Brecker; Clarence Clemons; Gerry Mulligan; Ben Webster; Joshua Redman; Candy Dulfer"),
    ]),
]
BIG += [
    *answers(BORN, [
        ("Germany", ("Austria", "France", "Poland"), (("Albert Einstein", "Max Planck", "Werner Heisenberg"),),
         "Carl Friedrich Gauss; Johannes Kepler; Robert Koch; Heinrich Hertz; Gottfried Leibniz; Alexander von Humboldt; Otto Hahn; Hermann von Helmholtz; Bernhard Riemann; David Hilbert; Georg Ohm; Justus von Liebig; Gustav Kirchhoff; Rudolf Diesel; Emmy Noether; Felix Klein; Georg Cantor"),
        ("England", ("Scotland", "France", "Germany"), (("Charles Darwin", "Stephen Hawking", "Paul Dirac"),),
         "James Chadwick; Robert Hooke; Edmond Halley; John Dalton; Joseph Priestley; Edward Jenner; Alan Turing; Rosalind Franklin; Francis Crick; Henry Cavendish; Humphry Davy; J.J. Thomson; Ada Lovelace; Francis Bacon; William Harvey; Joseph Lister; Dorothy Hodgkin; Peter Higgs; Tim Berners-Lee"),
        ("France", ("Belgium", "Italy", "Switzerland"), (("René Descartes", "Antoine Lavoisier", "Pierre Curie"),),
         "André-Marie Ampère; Henri Becquerel; Joseph Fourier; Joseph-Louis Lagrange; Évariste Galois; Augustin Cauchy; Henri Poincaré; Jean-Baptiste Lamarck; Georges Cuvier; Charles-Augustin de Coulomb; Sadi Carnot; Louis Daguerre; Léon Foucault"),
        ("Italy", ("Spain", "France", "Greece"), (("Enrico Fermi", "Evangelista Torricelli", "Amedeo Avogadro"),),
         "Leonardo Fibonacci; Camillo Golgi; Rita Levi-Montalcini; Luigi Galvani; Lazzaro Spallanzani; Giovanni Schiaparelli; Maria Montessori; Girolamo Cardano; Federico Faggin"),
        ("Scotland", ("England", "Ireland", "Wales"), (("James Clerk Maxwell", "Lord Kelvin", "Adam Smith"),),
         "John Logie Baird; Joseph Black; Charles Lyell; John Napier; Colin Maclaurin; Peter Guthrie Tait; William Ramsay"),
        ("the United States", ("Canada", "England", "Germany"), (("Thomas Edison", "Richard Feynman", "Benjamin Franklin"),),
         "Robert Oppenheimer; Carl Sagan; Edwin Hubble; Linus Pauling; James Watson; Barbara McClintock; Josiah Willard Gibbs; Claude Shannon; John Bardeen; Murray Gell-Mann; George Washington Carver; Orville Wright; Jonas Salk; Grace Hopper; Katherine Johnson; Robert Millikan"),
        ("Russia", ("Poland", "Ukraine", "Germany"), (("Dmitri Mendeleev", "Ivan Pavlov", "Mikhail Lomonosov"),),
         "Andrei Sakharov; Lev Landau; Nikolai Lobachevsky; Pyotr Kapitsa; Andrey Kolmogorov; Sofia Kovalevskaya; Konstantin Tsiolkovsky; Alexander Popov; Igor Kurchatov"),
        ("Austria", ("Germany", "Switzerland", "Hungary"), (("Erwin Schrödinger", "Gregor Mendel", "Ludwig Boltzmann"),),
         "Sigmund Freud; Wolfgang Pauli; Lise Meitner; Christian Doppler; Kurt Gödel; Karl Landsteiner; Konrad Lorenz"),
        ("Denmark", ("Sweden", "Norway", "Germany"), (("Tycho Brahe", "Hans Christian Ørsted", "Ole Rømer"),),
         "Aage Bohr; Nicolas Steno; Ludvig Lorenz"),
        ("Sweden", ("Norway", "Denmark", "Finland"), (("Carl Linnaeus", "Alfred Nobel", "Anders Celsius"),),
         "Svante Arrhenius; Jöns Jacob Berzelius; Hannes Alfvén"),
        ("Poland", ("Russia", "Germany", "Czech Republic"), (("Nicolaus Copernicus", "Stanislaw Ulam", "Kazimierz Funk"),),
         "Marian Rejewski; Ignacy Łukasiewicz; Stefan Banach; Józef Rotblat"),
        ("Greece", ("Italy", "Egypt", "Turkey"), (("Aristotle", "Archimedes", "Pythagoras"),),
         "Euclid; Hippocrates; Democritus; Thales of Miletus; Eratosthenes; Ptolemy; Hipparchus; Anaximander; Galen; Aristarchus"),
    ]),
    *answers(COMPOSER, [
        ("Germany", ("Austria", "Italy", "France"), (("Johann Sebastian Bach", "Ludwig van Beethoven", "Johannes Brahms"),),
         "Richard Wagner; Robert Schumann; Felix Mendelssohn; George Frideric Handel; Richard Strauss; Carl Orff; Georg Philipp Telemann; Engelbert Humperdinck; Carl Maria von Weber; Max Bruch; Paul Hindemith; Kurt Weill; Hans Zimmer; Jacques Offenbach; Christoph Willibald Gluck"),
        ("Austria", ("Germany", "Hungary", "Italy"), (("Franz Schubert", "Joseph Haydn", "Gustav Mahler"),),
         "Johann Strauss II; Anton Bruckner; Arnold Schoenberg; Alban Berg; Anton Webern; Carl Czerny"),
        ("Italy", ("Spain", "France", "Austria"), (("Giacomo Puccini", "Gioachino Rossini", "Claudio Monteverdi"),),
         "Gaetano Donizetti; Vincenzo Bellini; Arcangelo Corelli; Domenico Scarlatti; Alessandro Scarlatti; Ottorino Respighi; Pietro Mascagni; Ruggero Leoncavallo; Ennio Morricone; Luciano Berio; Giovanni Pierluigi da Palestrina; Tomaso Albinoni; Luigi Boccherini; Giovanni Battista Pergolesi; Luigi Cherubini; Amilcare Ponchielli"),
        ("France", ("Italy", "Belgium", "Germany"), (("Maurice Ravel", "Hector Berlioz", "Camille Saint-Saëns"),),
         "Georges Bizet; Gabriel Fauré; Erik Satie; Jules Massenet; Charles Gounod; Jean-Philippe Rameau; Jean-Baptiste Lully; Francis Poulenc; Olivier Messiaen; Léo Delibes; Paul Dukas; Darius Milhaud; Pierre Boulez; Vincent d'Indy"),
        ("Russia", ("Poland", "Ukraine", "Germany"), (("Igor Stravinsky", "Modest Mussorgsky", "Nikolai Rimsky-Korsakov"),),
         "Sergei Prokofiev; Dmitri Shostakovich; Alexander Borodin; Mikhail Glinka; Alexander Scriabin; Aram Khachaturian; Mily Balakirev; César Cui; Alexander Glazunov; Anton Rubinstein; Alfred Schnittke"),
        ("England", ("Scotland", "France", "Germany"), (("Edward Elgar", "Benjamin Britten", "Ralph Vaughan Williams"),),
         "Henry Purcell; Gustav Holst; Thomas Tallis; Arthur Sullivan; Frederick Delius; Andrew Lloyd Webber; John Dowland; Michael Tippett; Thomas Adès; Hubert Parry"),
        ("the United States", ("Canada", "England", "Germany"), (("George Gershwin", "Aaron Copland", "Leonard Bernstein"),),
         "John Williams; Philip Glass; Samuel Barber; John Cage; Charles Ives; Steve Reich; Scott Joplin; Cole Porter; Irving Berlin; Stephen Sondheim; Danny Elfman; John Philip Sousa"),
        ("Hungary", ("Austria", "Romania", "Poland"), (("Béla Bartók", "Zoltán Kodály", "György Ligeti"),),
         "Ernő Dohnányi; Franz Lehár; Imre Kálmán; Karl Goldmark"),
        ("the Czech Republic", ("Poland", "Austria", "Hungary"), (("Bedřich Smetana", "Leoš Janáček", "Bohuslav Martinů"),),
         "Josef Suk; Zdeněk Fibich; Jan Dismas Zelenka; Carl Stamitz"),
        ("Spain", ("Italy", "Portugal", "France"), (("Manuel de Falla", "Isaac Albéniz", "Enrique Granados"),),
         "Joaquín Rodrigo; Pablo de Sarasate; Francisco Tárrega; Tomás Luis de Victoria; Joaquín Turina"),
        ("Finland", ("Sweden", "Norway", "Denmark"), (("Jean Sibelius", "Einojuhani Rautavaara", "Kaija Saariaho"),),
         "Magnus Lindberg; Esa-Pekka Salonen; Leevi Madetoja; Uuno Klami"),
    ]),
]
# fmt: on


def interleave(groups: list[Group]) -> list[tuple[Group, Fact]]:
    """One fact of each group in turn, until every group is spent."""
    longest = max(len(g.facts) for g in groups)
    return [(g, g.facts[i]) for i in range(longest) for g in groups if i < len(g.facts)]


def candidates() -> list[dict]:
    """Every candidate as a flat request dict (before filtering): the legacy facts in order,
    then the new ones interleaved, then the groups of ``BIG`` interleaved (appended, so the
    facts kept from the earlier candidates stay first and in the same order)."""
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
        for g, (subject, true, new, neighbours) in legacy + interleave(NEW) + interleave(BIG)
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
