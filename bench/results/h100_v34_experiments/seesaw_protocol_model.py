"""A randomized model of the seesaw schedule's synchronisation (src/kernels/sm90/sm90_seesaw.h).

Each role of a CTA (K producer, Q loader, consumer 0, consumer 1) is a generator that yields the
operations the kernel's code performs, in its order: mbarrier waits (phase parity) and arrivals,
TMA loads (completed later by the model), wgmma commit groups (retired later, in order per
warpgroup), wgmma waits, and generic shared-memory stores. A warpgroup is one actor; an arrival
count of 128 threads is one arrival here. The model runs the roles under random interleavings and
random completion times over random sequences of visits, and fails on:
  - a deadlock (no role can move and nothing is in flight);
  - a wgmma or a read of the exchange that finds other data than the tile it expects (a stage
    reloaded too early, P or a factor slot overwritten before its reader is done, a V tail not yet
    zeroed);
  - a store (TMA or generic) into shared memory that an in-flight wgmma still reads.
It checks the protocol, not the arithmetic: the GPU tests check the results.

Usage: python3 seesaw_protocol_model.py [RUNS] [SEED]
"""
import random
import sys

STAGES = 2
PIECES = 9
ROPE = 8
V_HALF = 4


def group_pieces(consumer, stage):
    """Consumer c's piece group of a stage: its V half, plus the rope piece where it follows."""
    pieces = list(range(consumer * V_HALF, consumer * V_HALF + V_HALF))
    if consumer != stage:
        pieces.append(ROPE)
    return pieces


class Violation(Exception):
    pass


class Barrier:
    def __init__(self, name, arrivals):
        self.name, self.arrivals = name, arrivals
        self.pending, self.tx, self.completed = arrivals, 0, 0

    def arrive(self, tx=0):
        self.pending -= 1
        self.tx += tx
        if self.pending < 0:
            raise Violation(f"{self.name}: more arrivals than expected in one phase")
        self._maybe_complete()

    def complete_tx(self):
        self.tx -= 1
        self._maybe_complete()

    def _maybe_complete(self):
        if self.pending == 0 and self.tx == 0:
            self.completed += 1
            self.pending = self.arrivals

    def passes(self, parity):
        # try_wait.parity(parity) succeeds once the phase with that parity has completed.
        return self.completed % 2 != parity


class Cta:
    def __init__(self, rng):
        self.rng = rng
        b = {}
        for s in range(STAGES):
            for p in range(PIECES):
                b[("k_full", s, p)] = Barrier(f"k_full[{s}][{p}]", 1)
            b[("early", s)] = Barrier(f"k_empty_early[{s}]", 1)
            b[("late", s)] = Barrier(f"k_empty_late[{s}]", 1)
            b[("p_full", s)] = Barrier(f"p_full[{s}]", 1)
            b[("p_empty", s)] = Barrier(f"p_empty[{s}]", 1)
        for c in range(2):
            b[("sum_full", c)] = Barrier(f"sum_full[{c}]", 1)
            b[("sum_empty", c)] = Barrier(f"sum_empty[{c}]", 1)
        b["q_full"] = Barrier("q_full", 1)
        b["q_empty"] = Barrier("q_empty", 2)  # both consumers read Q
        self.bars = b
        self.smem = {}  # (stage, piece) or "q" -> content
        self.writing = set()  # pieces a TMA is writing
        self.readers = {}  # piece -> number of in-flight wgmma groups reading it
        self.groups = {0: [], 1: []}  # in-flight wgmma groups per consumer (lists of pieces)
        self.slot = {0: None, 1: None}  # exchange slot per stage: tile whose factors it holds
        self.sums = {0: None, 1: None}  # sum slot per consumer: visit whose sums it holds
        self.events = []  # TMA loads in flight: (piece, content, barrier)

    # ---- shared memory -------------------------------------------------------------------------
    def check_writable(self, piece, who):
        if self.readers.get(piece, 0):
            raise Violation(f"{who} writes {piece} while a wgmma reads it")
        if piece in self.writing:
            raise Violation(f"{who} writes {piece} while a TMA writes it")

    def store(self, piece, content, who):
        self.check_writable(piece, who)
        self.smem[piece] = content

    def start_tma(self, piece, content, barrier, who):
        self.check_writable(piece, who)
        self.writing.add(piece)
        barrier.arrive(tx=1)
        self.events.append((piece, content, barrier))

    def issue(self, consumer, reads, who):
        for piece, expected in reads:
            got = self.smem.get(piece)
            if piece in self.writing or got not in expected:
                raise Violation(f"{who} reads {piece}: holds {got}, expected one of {expected}")
            self.readers[piece] = self.readers.get(piece, 0) + 1
        self.groups[consumer].append([p for p, _ in reads])

    def retire_oldest(self, consumer):
        for piece in self.groups[consumer].pop(0):
            self.readers[piece] -= 1


def producer(cta, visits):
    """K loads: warp 0 lane 0 of the producer warpgroup (produce<kSeesaw>)."""
    stage, phase = 0, 0
    for v in visits:
        for t in v["tiles"]:
            for consumer, bar in ((0, ("early", stage)), (1, ("late", stage))):
                yield ("wait", cta.bars[bar], phase ^ 1)
                for p in group_pieces(consumer, stage):
                    cta.start_tma((stage, p), ("K", t), cta.bars[("k_full", stage, p)], f"producer tile {t}")
                    yield ("step",)
            stage += 1
            if stage == STAGES:
                stage, phase = 0, phase ^ 1


def q_loader(cta, visits):
    q_phase = 0
    for i, v in enumerate(visits):
        if not v["tiles"]:
            continue
        yield ("wait", cta.bars["q_empty"], q_phase ^ 1)
        cta.start_tma("q", ("Q", i), cta.bars["q_full"], "q loader")
        yield ("step",)
        q_phase ^= 1


def consumer(cta, visits, c):
    other = 1 - c
    follow_before_qk = c == 0
    who = f"consumer {c}"
    stage, phase = 0, 0
    q_phase, sum_phase = 0, 0

    def wait_group(n):
        yield ("wgwait", c, n)

    def take_follow(tile, ph):
        yield ("wait", cta.bars[("p_full", other)], ph)
        if cta.slot[other] != tile:
            raise Violation(f"{who} reads factors of tile {cta.slot[other]}, expected {tile}")
        cta.slot[other] = ("read", tile)
        cta.bars[("p_empty", other)].arrive()
        for i in range(V_HALF):
            yield ("wait", cta.bars[("k_full", other, c * V_HALF + i)], ph)

    def issue_follow_pv(tile, last_partial):
        v_ok = [("Kz", tile)] if last_partial else [("K", tile)]
        reads = [((other, ROPE), [("P", tile)])] + [((other, c * V_HALF + i), v_ok) for i in range(V_HALF)]
        cta.issue(c, reads, f"{who} follow-up P.V of tile {tile}")

    for vi, v in enumerate(visits):
        tiles = v["tiles"]
        n = len(tiles)
        staged = v["staged"] and n > 0
        last_lead = n - 1 - (1 if (stage + n - 1) % STAGES != c else 0)
        if n:
            if last_lead >= 0:
                yield ("wait", cta.bars["q_full"], q_phase)
            else:
                cta.bars["q_empty"].arrive()
        pending = None
        for i, t in enumerate(tiles):
            last_partial = v["partial_last"] and i == n - 1
            if stage != c:
                pending = (t, phase, last_partial)
                stage += 1
                if stage == STAGES:
                    stage, phase = 0, phase ^ 1
                continue
            if follow_before_qk and pending:
                yield from take_follow(pending[0], pending[1])
                issue_follow_pv(pending[0], pending[2])
                yield from wait_group(0)
                cta.bars[("early" if c == 0 else "late", other)].arrive()
                pending = None
            if last_partial:
                for p in range(8):
                    yield ("wait", cta.bars[("k_full", stage, p)], phase)
                for p in range(8):
                    cta.store((stage, p), ("Kz", t), f"{who} zeroing tile {t}")
            # issue_qk: first consumer 0's group of the stage, then consumer 1's, each after its pieces
            v_ok = [("Kz", t)] if last_partial else [("K", t)]
            for g in (0, 1):
                pieces = group_pieces(g, stage)
                for p in pieces:
                    yield ("wait", cta.bars[("k_full", stage, p)], phase)
                reads = [((stage, p), v_ok if p != ROPE else [("K", t)]) for p in pieces]
                if g == 0:
                    reads.append(("q", [("Q", vi)]))
                cta.issue(c, reads, f"{who} QK of tile {t}")
            follows_now = not follow_before_qk and pending
            if follows_now:
                yield from take_follow(pending[0], pending[1])
                if cta.rng.random() < 0.2:  # a row moved its max: QK^T retired before the rescale
                    yield from wait_group(0)
                issue_follow_pv(pending[0], pending[2])
                yield from wait_group(1)
            else:
                yield from wait_group(0)
            if i == last_lead:
                cta.bars["q_empty"].arrive()
            # publish
            yield ("wait", cta.bars[("p_empty", c)], phase ^ 1)
            if cta.slot[c] is not None and cta.slot[c][0] != "read":
                raise Violation(f"{who} overwrites factors of tile {cta.slot[c]} before they were read")
            cta.store((stage, ROPE), ("P", t), f"{who} P of tile {t}")
            cta.slot[c] = t
            cta.bars[("p_full", c)].arrive()
            if follows_now:
                yield from wait_group(0)
                cta.bars[("early" if c == 0 else "late", other)].arrive()
                pending = None
            cta.issue(c, [((stage, c * V_HALF + k), v_ok) for k in range(V_HALF)], f"{who} own P.V of tile {t}")
            yield from wait_group(0)
            if not (i == n - 1 and staged):
                cta.bars[("early" if c == 0 else "late", stage)].arrive()
            stage += 1
            if stage == STAGES:
                stage, phase = 0, phase ^ 1
        if pending:
            yield from take_follow(pending[0], pending[1])
            issue_follow_pv(pending[0], pending[2])
            yield from wait_group(0)
            if not staged:
                cta.bars[("early" if c == 0 else "late", other)].arrive()
        if n:
            q_phase ^= 1
            yield ("wait", cta.bars[("sum_empty", c)], sum_phase ^ 1)
            if cta.sums[c] is not None and cta.sums[c][0] != "read":
                raise Violation(f"{who} overwrites its sums of visit {cta.sums[c]} before they were read")
            cta.sums[c] = vi
            cta.bars[("sum_full", c)].arrive()
            yield ("wait", cta.bars[("sum_full", other)], sum_phase)
            if cta.sums[other] != vi:
                raise Violation(f"{who} reads sums of visit {cta.sums[other]}, expected {vi}")
            cta.sums[other] = ("read", vi)
            cta.bars[("sum_empty", other)].arrive()
            sum_phase ^= 1
        if staged:
            last_stage = (stage - 1) % STAGES
            for k in range(V_HALF):
                cta.store((last_stage, c * V_HALF + k), ("O", vi, c), f"{who} staged output")
                yield ("step",)
            cta.bars[("early" if c == 0 else "late", last_stage)].arrive()


def run(rng):
    visits = []
    for _ in range(rng.randint(1, 6)):
        n = rng.choice([0, 1, 1, 2, 3, 4, 5])
        visits.append({"tiles": [len(visits) * 100 + t for t in range(n)],
                       "staged": rng.random() < 0.4, "partial_last": rng.random() < 0.5})
    cta = Cta(rng)
    roles = {"producer": producer(cta, visits), "q": q_loader(cta, visits),
             "c0": consumer(cta, visits, 0), "c1": consumer(cta, visits, 1)}
    current = {name: None for name in roles}  # the operation each role waits on before it moves

    def can_go(op):
        if op is None or op[0] == "step":
            return True
        if op[0] == "wait":
            return op[1].passes(op[2])
        if op[0] == "wgwait":
            return len(cta.groups[op[1]]) <= op[2]
        raise AssertionError(op)

    while roles or cta.events:
        choices = [("role", name) for name in roles if can_go(current[name])]
        choices += [("event", i) for i in range(len(cta.events))]
        choices += [("retire", c) for c in (0, 1) if cta.groups[c]]
        if not choices:
            blocked = {n: (op[0], op[1].name, op[2]) if op and op[0] == "wait" else op for n, op in current.items()}
            raise Violation(f"deadlock: {blocked}; visits {visits}")
        kind, what = rng.choice(choices)
        if kind == "event":
            piece, content, barrier = cta.events.pop(what)
            cta.writing.discard(piece)
            cta.smem[piece] = content
            barrier.complete_tx()
        elif kind == "retire":
            cta.retire_oldest(what)
        else:
            try:
                current[what] = next(roles[what])
            except StopIteration:
                del roles[what]
                current.pop(what)


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    rng = random.Random(seed)
    for i in range(runs):
        try:
            run(rng)
        except Violation as e:
            print(f"run {i}: {e}")
            return 1
    print(f"{runs} random runs: no deadlock, no stale read, no write under a reader")
    return 0


if __name__ == "__main__":
    sys.exit(main())
