"""Baseline fine-tuning methods, each one module implementing folora's Method interface."""
