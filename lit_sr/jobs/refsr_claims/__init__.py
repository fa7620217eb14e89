"""``lit-sr refsr-claims``: RefSR-Adv's claims measured on RefSR models lit-sr trains (:mod:`.config`,
:mod:`.measure`, :mod:`.write`, :mod:`.cli`)."""
