"""``lit-sr evaluate-refsr``: the robustness report of RefSR models by reference similarity (:mod:`.report`, :mod:`.cli`)."""
