"""Analyses of trained models: where masks fail although the boxes are right."""
