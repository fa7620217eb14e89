"""The attack registry: every attack class of lit-sr under its own ``name``, and what reads it.

An attack joins by decorating its class (and its module being imported by :mod:`lit_sr.attacks`)::

    @register_attack
    class MyAttack(Attack):
        name = "my_attack"        # the key of the attacks block, of robust fine-tuning's attack=
        plain = True              # called as atk(lr, hr=hr) on whole images (see Attack.plain)

From then on the ``attacks`` block of every report and of ``AdversarialEvalCallback``
(:func:`lit_sr.attacks.spec.parse_attacks`), robust fine-tuning (``RobustFinetuneModule(attack=...)``),
the worst case of ``lit-sr robust`` and the report's robust block, the transfer matrix, the input
defenses and the LR side of a RefSR attacks block accept it; nothing else is edited
(docs/extending.md). A name unknown to the registry is rejected by whoever reads it, with the key
and the registered names in the message.
"""

from __future__ import annotations

from typing import TypeVar

from lit_sr.attacks.base import Attack

ATTACKS: dict[str, type[Attack]] = {}
"""name -> attack class, in registration order (the built-ins first)."""

A = TypeVar("A", bound=type[Attack])


def register_attack(cls: A) -> A:
    """Class decorator: add ``cls`` to :data:`ATTACKS` under the ``name`` it declares itself.

    The name must be the class's own (an inherited one would silently replace the parent), and a
    name already taken by another class raises, so two attacks can never share a key.
    """
    if not (isinstance(cls, type) and issubclass(cls, Attack)):
        raise TypeError(f"register_attack expects a subclass of lit_sr.attacks.Attack, got {cls!r}")
    name = cls.__dict__.get("name")
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"{cls.__name__} must declare its own name = '<identifier>' to be registered, got {name!r}")
    if ATTACKS.get(name, cls) is not cls:
        raise ValueError(f"attack name {name!r} is already registered by {ATTACKS[name].__qualname__}")
    ATTACKS[name] = cls
    return cls


def plain_kinds() -> tuple[str, ...]:
    """The registered attacks called as ``atk(lr, hr=hr)`` on whole images and measured on them (``plain``).

    Those are what the transfer matrix, the input defenses, robust fine-tuning, the worst case and
    the LR side of a RefSR model can run. Read at call time, so an attack registered after import counts.
    """
    return tuple(name for name, cls in ATTACKS.items() if cls.plain)
