"""A plausible fleet of machines: the physics behind the simulator and the default model's data.

Each machine has its own rated speed, vibration baseline and thermal and electrical constants.
Load wanders over minutes, the hall's air temperature follows the time of day, and faults can be
injected: bearing wear (vibration climbs) and overheating (temperature climbs without more
current). Everything is vectorised over machines, so one call produces one reading per machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = ["FEATURES", "UNITS", "Fleet"]

FEATURES = ("temperature", "vibration", "current", "pressure", "speed")
UNITS = ("degC", "mm/s", "A", "bar", "rpm")

Floats = npt.NDArray[np.float64]
_DAY = 86_400.0


@dataclass
class Fleet:
    """``n`` machines with fixed per-machine constants drawn from ``seed``."""

    n: int
    seed: int = 0
    rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        r = np.random.default_rng(self.seed + 7919)
        n = self.n
        self.rated_speed = r.uniform(1_200.0, 1_800.0, n)
        self.vib_base = r.uniform(1.5, 3.0, n)
        self.i_idle = r.uniform(4.0, 7.0, n)
        self.i_load = r.uniform(14.0, 22.0, n)
        self.p_base = r.uniform(3.5, 4.5, n)
        self.p_load = r.uniform(1.5, 2.5, n)
        self.k_therm = r.uniform(0.7, 0.9, n)
        self.hall_offset = r.uniform(-1.5, 1.5, n)
        self.load_period = r.uniform(300.0, 1_800.0, n)
        self.load_phase = r.uniform(0.0, 2 * np.pi, n)
        # Fault levels in [0, 1], set by the caller (simulator schedule or training data).
        self.wear = np.zeros(n)
        self.overheat = np.zeros(n)

    def sample(self, t: Floats | float) -> Floats:
        """One reading per machine at epoch seconds ``t``: shape (n, len(FEATURES))."""
        t = np.broadcast_to(np.asarray(t, dtype=np.float64), (self.n,))
        noise = self.rng.standard_normal((self.n, 5))
        load = 0.65 + 0.25 * np.sin(2 * np.pi * t / self.load_period + self.load_phase)
        load = np.clip(load + 0.03 * noise[:, 0], 0.05, 1.0)
        speed = self.rated_speed * (0.9 + 0.1 * load) + 4.0 * noise[:, 4]
        rel_speed = speed / 1_500.0
        current = self.i_idle + self.i_load * load * rel_speed + 0.3 * noise[:, 2]
        pressure = self.p_base + self.p_load * load + 0.05 * noise[:, 3]
        # Air in the hall: coolest at 04:00, warmest at 16:00 (local time is UTC here).
        hall = 22.0 + 4.0 * np.sin(2 * np.pi * ((t % _DAY) / _DAY - 10.0 / 24.0)) + self.hall_offset
        temperature = hall + self.k_therm * current + 3.0 * self.wear + 22.0 * self.overheat
        temperature = temperature + 0.3 * noise[:, 1]
        vibration = self.vib_base * rel_speed**2 * (1.0 + 0.2 * load) * (1.0 + 2.5 * self.wear)
        vibration = vibration + 0.08 * self.rng.standard_normal(self.n)
        return np.stack([temperature, vibration, current, pressure, speed], axis=1)
