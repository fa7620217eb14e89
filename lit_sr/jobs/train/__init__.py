"""``lit-sr fit|validate|test|predict``: LightningCLI with the prediction writer (:mod:`.cli`)."""
