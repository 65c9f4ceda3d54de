/* The lock table's fast path (mod_pidlock/pidlock_table.cc) as a Promela
 * model for spin: two readers and a writer take and release one key through
 * the state word (fast readers R, fast writer W, REPAIR bit REP) and their
 * own holder slots (idle, pending, held, releasing); any one of them may die
 * at any step; a repairer, under the stripe mutex, sets REPAIR, waits for
 * the living's pending and releasing slots to settle, and recomputes the
 * word from the held slots of the living.
 *
 * Checked: mutual exclusion (never two writers, never a writer beside a
 * reader, among the living), and no stuck state (every living process ends:
 * spin reports a blocked process as an invalid end state).
 * -DBROKEN_NO_REPAIR_CHECK: the fast CAS ignores REPAIR (the bug the bit
 * prevents); spin must find a violation.
 * -DBROKEN_NO_SETTLE: the repairer recomputes without waiting for pending
 * slots to settle; spin must find a violation.
 */
#define NP 3
#define IDLE 0
#define PEND 1
#define HELD 2
#define RELG 3

byte R = 0;        /* fast readers counted in the word */
bit W = 0;         /* fast writer counted in the word */
bit REP = 0;       /* REPAIR */
bit mutex = 0;     /* the stripe mutex */
byte st[NP];       /* holder slots */
bit alive[NP];
bit crashed = 0;   /* at most one death per run */
bit repaired = 0;
byte done = 0;

#define ALLOWED(wr) ((wr) -> (R == 0 && W == 0) : (W == 0))
#ifdef BROKEN_NO_REPAIR_CHECK
#define FAST_OK(wr) (ALLOWED(wr))
#else
#define FAST_OK(wr) (!REP && ALLOWED(wr))
#endif

/* Dies here, or goes on. */
#define MAYCRASH(i) if :: atomic { !crashed -> crashed = 1; alive[i] = 0 }; goto dead :: true -> skip fi


proctype P(byte i; bit wr) {
    MAYCRASH(i);
    /* acquire: mark pending, then CAS */
acquire:
    st[i] = PEND;
    MAYCRASH(i);
    if
    :: atomic { FAST_OK(wr) -> if :: wr -> W = 1 :: else -> R++ fi }
       MAYCRASH(i);
       st[i] = HELD
    :: atomic { !FAST_OK(wr) -> st[i] = IDLE }
       /* the slow path: wait (queued) until the word lets it in, then again */
       MAYCRASH(i);
       atomic { (!REP && ALLOWED(wr)) -> skip };
       goto acquire
    fi;
    /* critical section */
    MAYCRASH(i);
    /* release: mark releasing, then CAS (or, under REPAIR, held again and
     * the mutex: the repair has counted it, then the CAS under the mutex) */
    st[i] = RELG;
    MAYCRASH(i);
    if
    :: atomic { !REP -> if :: wr -> W = 0 :: else -> R-- fi }
    :: atomic { REP -> st[i] = HELD }
       MAYCRASH(i);
       atomic { mutex == 0 -> mutex = 1 };
       st[i] = RELG;
       atomic { if :: wr -> W = 0 :: else -> R-- fi };
       mutex = 0
    fi;
    MAYCRASH(i);
    st[i] = IDLE;
    done++;
dead:
    skip
}

/* Whoever waits behind a dead holder repairs the entry under the mutex. */
proctype Repairer() {
    byte r, j, s;
    bit w, unsettled;
end_idle:  /* a run with no death never needs it */
    atomic { (crashed && mutex == 0) -> mutex = 1 };
    REP = 1;
    /* One pass over the slots, each read once (as the code does): the held
     * of the living are counted, a living one pending or releasing means
     * the pass is made again. */
scan:
    r = 0; w = 0; unsettled = 0; j = 0;
    do
    :: j < NP ->
       s = st[j];
       if
       :: alive[j] && (s == PEND || s == RELG) -> unsettled = 1
       :: alive[j] && s == HELD && j == 2 -> w = 1
       :: alive[j] && s == HELD && j != 2 -> r++
       :: else -> skip
       fi;
       j++
    :: j == NP -> break
    od;
#ifndef BROKEN_NO_SETTLE
    if :: unsettled -> goto scan :: else -> skip fi;
#endif
    R = r;
    W = w;
    REP = 0;
    mutex = 0;
    repaired = 1
}

/* Mutual exclusion among the living, checked in every reachable state. */
active proctype Monitor() {
    byte nr, nw;
    atomic {
        nr = (alive[0] && st[0] == HELD) + (alive[1] && st[1] == HELD);
        nw = (alive[2] && st[2] == HELD);
        assert(nw <= 1 && !(nw == 1 && nr > 0))
    }
}

init {
    atomic {
        alive[0] = 1; alive[1] = 1; alive[2] = 1;
        run P(0, 0); run P(1, 0); run P(2, 1);
        run Repairer()
    }
    /* No stuck state: every process that did not die finishes (a blocked
     * one is an invalid end state), the repair after a death ends, and then
     * the word counts nobody: what the dead held is gone. */
    (done + crashed == NP);
    (!crashed || repaired);
    assert(R == 0 && W == 0)
}
