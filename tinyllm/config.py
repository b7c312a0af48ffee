"""``Config``: what every settings dataclass shares - copy with changes, to and from a dict.

>>> import dataclasses
>>> @dataclasses.dataclass(frozen=True)
... class Example(Config):
...     width: int = 8
>>> Example().replace(width=16).to_dict()
{'width': 16}
>>> Example.from_dict({"widht": 16})
Traceback (most recent call last):
...
ValueError: Example: unknown fields ['widht']; known are ['width']
"""

import dataclasses


class Config:
    """A base for frozen dataclasses of settings (``ModelConfig``, ``TrainConfig``, ...)."""

    def replace(self, **changes):
        """A copy with some fields changed (and checked again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values):
        """The config with these field values; an unknown field name is an error."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown fields {unknown}; known are {sorted(known)}")
        return cls(**values)
