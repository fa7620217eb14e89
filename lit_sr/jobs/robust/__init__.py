"""``lit-sr robust``: worst-case evaluation of robust fine-tuning from the command line (:mod:`.cli`)."""
