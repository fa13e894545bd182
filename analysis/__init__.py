"""Reads result files only (never model code): runs' results.json files into tables."""
