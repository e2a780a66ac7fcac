"""Shipped probe data (identity terms and templates for the bias probe)."""
