"""``lit-sr study``: many training runs from one YAML file, one table (:mod:`.runner`, :mod:`.table`)."""
