"""One YAML file per table or figure (its grid and its rendering) and `reproduce`, which runs and renders them."""
