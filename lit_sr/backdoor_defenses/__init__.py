"""Backdoor defenses for SR models: model repair and detection of poisoned training pairs.

Import from the submodules (e.g. ``lit_sr.backdoor_defenses.detection``); nothing is imported here.
"""
