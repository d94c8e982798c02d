"""How long a function takes on an endpoint, learned online from completed tasks.

The hub (and the simulator, the same way) calls `observe()` for every result
and `predict()` while routing. Per (function, endpoint) pair the model keeps:

- a robust running estimate: an EWMA of runtimes, each clipped to the median
  of the last few samples plus a few robust deviations (MAD), so one
  straggler barely moves it while a real change in level is followed;
- a size model: online least squares of runtime on payload bytes, used only
  when it explains the data (enough samples, payloads that vary, R^2 high);
- the cold-start cost: what a function's first call on a worker costs beyond
  a warm call, and how often calls there are cold.

For a pair it has never seen, the prior is the same function measured on
other endpoints scaled by relative speed; speeds start at what endpoints
declare and are corrected from functions that ran on both endpoints. A
function measured nowhere gets `hint()`-ed runtime, else `default_runtime_s`,
scaled by speed. Memory is bounded: past `max_pairs` (about 1 KB each) the
least recently observed pair is forgotten.
"""

from __future__ import annotations

import math
from array import array
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

#: Clip a new sample at median + CLIP * robust sigma (sigma = 1.4826 MAD).
CLIP = 3.0
#: Floor on the robust sigma, as a fraction of the median: a function whose
#: runtimes were all identical must still be able to move a little.
MIN_REL_SIGMA = 0.1
#: How many other endpoints a function is compared against (speed learning, priors).
PEERS = 4
#: Step of the pairwise speed correction (0..1): half the error per observation.
SPEED_STEP = 0.5


@dataclass(frozen=True, slots=True)
class Estimate:
    """A prediction for one call of a function on one endpoint."""

    runtime_s: float  # warm runtime
    cold_start_s: float  # extra seconds when the worker has not run the function yet
    # How likely the next call there is cold: 1.0 if it never ran there; given
    # the endpoint's workers, at most the share of them that never ran it.
    cold_chance: float
    spread_s: float  # robust spread of recent runtimes; 0.0 when not measured
    samples: int  # observations of this pair (warm or cold); 0 means the estimate is a prior
    source: str  # "measured", "size model", "scaled from <endpoint>", "hint", "default"

    @property
    def work_s(self) -> float:
        """Expected worker-seconds: runtime plus the expected cold-start cost."""
        return self.runtime_s + self.cold_chance * self.cold_start_s


class _Pair:
    """Everything learned about one function on one endpoint."""

    __slots__ = ("n", "ewma", "window", "size", "median", "sigma", "cold_n", "cold_ewma",
                 "cold_payload", "cold_chance", "reg_n", "mean_x", "mean_y", "m2x", "m2y", "cxy")

    def __init__(self, window: int) -> None:
        self.n = 0  # warm samples
        self.ewma = 0.0
        # The last `size` warm runtimes, a ring of raw doubles: a deque of floats
        # would cost several times the memory, and a hub tracks many pairs.
        self.window = array("d")
        self.size = window
        self.median = 0.0
        self.sigma = 0.0
        self.cold_n = 0
        self.cold_ewma = 0.0  # runtime of cold calls
        self.cold_payload = 0.0  # payload of cold calls, to compare like with like
        self.cold_chance = 1.0
        # Welford sums for runtime ~ payload (no catastrophic cancellation at GB sizes).
        self.reg_n = 0
        self.mean_x = self.mean_y = self.m2x = self.m2y = self.cxy = 0.0

    def add_warm(self, runtime_s: float, payload: float, alpha: float) -> None:
        y = y_line = runtime_s
        if len(self.window) >= 3:
            bound = self.median + CLIP * self.sigma
            y = min(y, bound)
            # A bigger payload may legitimately take longer: scale the bound with
            # it, so the size model still sees the slope but not a straggler.
            if self.mean_x > 0.0 and payload > self.mean_x:
                bound *= payload / self.mean_x
            y_line = min(y_line, bound)
        if len(self.window) < self.size:
            self.window.append(runtime_s)
        else:
            self.window[self.n % self.size] = runtime_s
        self.n += 1
        xs = sorted(self.window)
        self.median = med = _median(xs)
        mad = _median(sorted(abs(x - med) for x in xs))
        self.sigma = max(1.4826 * mad, MIN_REL_SIGMA * med)
        if self.n <= 5:
            self.ewma = med  # too few samples to clip: the median is the robust start
        else:
            self.ewma += alpha * (y - self.ewma)
        y = y_line
        self.reg_n += 1
        dx, dy = payload - self.mean_x, y - self.mean_y
        self.mean_x += dx / self.reg_n
        self.mean_y += dy / self.reg_n
        self.m2x += dx * (payload - self.mean_x)
        self.m2y += dy * (y - self.mean_y)
        self.cxy += dx * (y - self.mean_y)

    def slope(self) -> float | None:
        """Seconds per payload byte, when a straight line explains the samples."""
        if self.reg_n < 6 or self.m2x <= 0.0 or self.m2y <= 0.0:
            return None
        std_x = math.sqrt(self.m2x / self.reg_n)
        if std_x < 0.1 * abs(self.mean_x):  # payloads barely vary: nothing to learn
            return None
        if self.cxy <= 0.0 or self.cxy * self.cxy < 0.6 * self.m2x * self.m2y:  # R^2 < 0.6
            return None
        return self.cxy / self.m2x

    def runtime(self, payload: float) -> tuple[float, str]:
        """Warm runtime at this payload, and which estimate gave it (warm calls seen)."""
        b = self.slope()
        if b is None:
            return self.ewma, "measured"
        return max(self.mean_y + b * (payload - self.mean_x), 0.05 * self.mean_y), "size model"

    def cold_start(self) -> float | None:
        if self.cold_n == 0 or self.n == 0:
            return None
        return max(0.0, self.cold_ewma - self.runtime(self.cold_payload)[0])


class RuntimeModel:
    """Predicted runtime and cold start of each function on each endpoint."""

    def __init__(self, default_runtime_s: float = 1.0, default_cold_start_s: float = 0.0,
                 alpha: float = 0.1, window: int = 32, max_pairs: int = 50_000) -> None:
        self.default_runtime_s = default_runtime_s
        self.default_cold_start_s = default_cold_start_s
        self.alpha = alpha
        self.window = window
        self.max_pairs = max_pairs
        self._pairs: OrderedDict[tuple[str, str], _Pair] = OrderedDict()  # LRU order
        self._where: dict[str, dict[str, _Pair]] = {}  # function -> endpoint -> pair
        self._hints: dict[str, float] = {}
        self._fn_cold: dict[str, float] = {}  # function -> cold-start cost seen anywhere
        self._ep_cold: dict[str, float] = {}  # endpoint -> cold-start cost of any function
        self._declared: dict[str, float] = {}  # endpoint -> declared relative speed
        self._log_adjust: dict[str, float] = {}  # endpoint -> learned log-speed correction
        self._typical: dict[str, float] = {}  # endpoint -> EWMA of any runtime there
        # Values derived from the above, memoised between observations: a batch
        # asks for the prior of one function on a thousand endpoints at once.
        self._derived: dict[tuple, Any] = {}

    def __len__(self) -> int:
        return len(self._pairs)

    # ---------------------------------------------------------------- inputs
    def declare_speed(self, endpoint_id: str, relative_speed: float) -> None:
        """The speed an endpoint declares; learned corrections apply on top."""
        if relative_speed > 0.0 and self._declared.get(endpoint_id) != relative_speed:
            self._declared[endpoint_id] = relative_speed
            self._derived.clear()

    def hint(self, function_id: str, runtime_s: float) -> None:
        """A user's (or a probe's) runtime for a function on a speed-1.0 endpoint."""
        self._hints[function_id] = runtime_s
        self._derived.clear()

    def observe(self, function_id: str, endpoint_id: str, runtime_s: float,
                payload_bytes: int = 0, cold: bool = False) -> None:
        """A completed call: its runtime as the worker measured it, and whether
        it was the function's first call on that worker."""
        self._derived.clear()
        key = (function_id, endpoint_id)
        pair = self._pairs.get(key)
        if pair is None:
            pair = self._pairs[key] = _Pair(self.window)
            self._where.setdefault(function_id, {})[endpoint_id] = pair
            if len(self._pairs) > self.max_pairs:
                self._forget_oldest()
        else:
            self._pairs.move_to_end(key)
        a = self.alpha
        if cold:
            pair.cold_n += 1
            w = max(a, 1.0 / pair.cold_n)
            pair.cold_ewma += w * (runtime_s - pair.cold_ewma)
            pair.cold_payload += w * (payload_bytes - pair.cold_payload)
            pair.cold_chance += a * (1.0 - pair.cold_chance)
        else:
            pair.add_warm(runtime_s, payload_bytes, a)
            pair.cold_chance -= a * pair.cold_chance
            self._learn_speed(function_id, endpoint_id, pair)
        extra = pair.cold_start()
        if extra is not None:
            for table, key in ((self._fn_cold, function_id), (self._ep_cold, endpoint_id)):
                old = table.get(key)
                table[key] = extra if old is None else old + a * (extra - old)
        old = self._typical.get(endpoint_id)
        self._typical[endpoint_id] = runtime_s if old is None else old + a * (runtime_s - old)

    # ---------------------------------------------------------------- outputs
    def speed(self, endpoint_id: str) -> float:
        """Relative speed: declared (1.0 if not), corrected by what was measured."""
        adjust = self._log_adjust.get(endpoint_id)
        declared = self._declared.get(endpoint_id, 1.0)
        return declared if adjust is None else declared * math.exp(adjust)

    def typical_runtime(self, endpoint_id: str) -> float:
        """A runtime to assume for tasks of unknown function queued on an endpoint."""
        t = self._typical.get(endpoint_id)
        return t if t is not None else self.default_runtime_s / self.speed(endpoint_id)

    def predict(self, function_id: str, endpoint_id: str, payload_bytes: int = 0,
                workers: int = 0) -> Estimate:
        """The next call's runtime and cold start. `workers` (the endpoint's, if
        known) caps the cold chance: each cold call warmed one worker."""
        pair = self._pairs.get((function_id, endpoint_id))
        if pair is None:
            runtime, source = self._prior(function_id, endpoint_id, payload_bytes)
            return Estimate(runtime, self._cold_guess(function_id, endpoint_id), 1.0, 0.0, 0,
                            source)
        runtime, source = self._warm_runtime(function_id, endpoint_id, pair, payload_bytes)
        cold = pair.cold_start()
        if cold is None:
            cold = pair.cold_ewma - runtime if pair.n == 0 else self._cold_guess(function_id, endpoint_id)
        chance = pair.cold_chance
        if workers > 0:
            chance = min(chance, max(0.0, 1.0 - pair.cold_n / workers))
        spread = pair.sigma if pair.n >= 3 else 0.0
        return Estimate(runtime, cold, chance, spread, pair.n + pair.cold_n, source)

    def per_byte_s(self, function_id: str, endpoint_id: str) -> float:
        """How much longer the function runs per payload byte there (0.0 when
        runtime does not depend on size, as far as the model can tell)."""
        pair = self._pairs.get((function_id, endpoint_id))
        if pair is not None:
            return (pair.slope() or 0.0) if pair.n else 0.0
        key = ("slope", function_id)
        base = self._derived.get(key)
        if base is None:  # speed-normalised slope of the function where it ran
            slopes = []
            for other, p in reversed(self._where.get(function_id, {}).items()):
                if p.n:
                    slopes.append((p.slope() or 0.0) * self.speed(other))
                    if len(slopes) == PEERS:
                        break
            base = self._derived[key] = sum(slopes) / len(slopes) if slopes else 0.0
        return base / self.speed(endpoint_id)

    # ---------------------------------------------------------------- insides
    def _warm_runtime(self, function_id: str, endpoint_id: str, pair: _Pair,
                      payload: float) -> tuple[float, str]:
        if pair.n:
            return pair.runtime(payload)
        # Only cold calls seen (a new function on many workers): take off the
        # cold start learned elsewhere, keeping at least a tenth of what was seen.
        guess = self._cold_guess(function_id, endpoint_id)
        return max(pair.cold_ewma - guess, 0.1 * pair.cold_ewma), "measured cold"

    def _cold_guess(self, function_id: str, endpoint_id: str) -> float:
        """Cold-start cost where this pair has not shown it: the endpoint's and
        the function's elsewhere, averaged, else the default."""
        known = [t[k] for t, k in ((self._ep_cold, endpoint_id), (self._fn_cold, function_id))
                 if k in t]
        return sum(known) / len(known) if known else self.default_cold_start_s

    def _prior(self, function_id: str, endpoint_id: str, payload: int) -> tuple[float, str]:
        """An unseen pair: the function elsewhere, scaled by relative speed."""
        key = ("prior", function_id, payload)
        got = self._derived.get(key)
        if got is None:
            got = self._derived[key] = self._speed_one_runtime(function_id, payload)
        return got[0] / self.speed(endpoint_id), got[1]

    def _speed_one_runtime(self, function_id: str, payload: int) -> tuple[float, str]:
        """The function's runtime on a speed-1.0 endpoint, and where that comes from:
        the geometric mean of the endpoints it ran on lately, each scaled by speed."""
        peers = self._where.get(function_id)
        if peers:
            log_sum, n, first = 0.0, 0, ""
            for other, pair in reversed(peers.items()):  # most recently observed first
                runtime, _ = self._warm_runtime(function_id, other, pair, payload)
                if runtime > 0.0:
                    log_sum += math.log(runtime * self.speed(other))
                    n += 1
                    first = first or other
                    if n == PEERS:
                        break
            if n:
                return math.exp(log_sum / n), f"scaled from {first}"
        hinted = self._hints.get(function_id)
        if hinted is not None:
            return hinted, "hint"
        return self.default_runtime_s, "default"

    def _learn_speed(self, function_id: str, endpoint_id: str, pair: _Pair) -> None:
        """Nudge relative speeds so that the same function's runtimes on two
        endpoints agree with their speed ratio (pairwise, so the mean stays put)."""
        peers = self._where.get(function_id, {})
        mine = math.log(max(pair.ewma, 1e-9))
        n = 0
        for other, p in reversed(peers.items()):
            if other == endpoint_id or p.n == 0:
                continue
            # log(t_other / t_mine) should equal log(speed_mine / speed_other)
            observed = math.log(max(p.ewma, 1e-9)) - mine
            err = observed - (math.log(self.speed(endpoint_id)) - math.log(self.speed(other)))
            step = SPEED_STEP * err / 2.0
            self._log_adjust[endpoint_id] = self._log_adjust.get(endpoint_id, 0.0) + step
            self._log_adjust[other] = self._log_adjust.get(other, 0.0) - step
            n += 1
            if n == PEERS:
                break
        # Keep the pair most recently observed last, so priors prefer fresh peers.
        peers.pop(endpoint_id, None)
        peers[endpoint_id] = pair

    def _forget_oldest(self) -> None:
        (function_id, endpoint_id), _ = self._pairs.popitem(last=False)
        peers = self._where.get(function_id)
        if peers is not None:
            peers.pop(endpoint_id, None)
            if not peers:
                del self._where[function_id]
                self._fn_cold.pop(function_id, None)


def _median(xs: list[float]) -> float:
    n = len(xs)
    mid = n // 2
    return xs[mid] if n % 2 else 0.5 * (xs[mid - 1] + xs[mid])
