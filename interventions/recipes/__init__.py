"""Recipes: published methods written as thin, readable files on top of the public API.

Each recipe is one module whose docstring names the paper, the algorithm in a few lines and a
usage example: ``from interventions.recipes import head_scores``.
"""
