# Plots of one bench run: gnuplot -e "dir='bench/results/full'" bench/plots.gp
# Reads the *.dat files bench_table and httpd_bench.py wrote into dir.
if (!exists("dir")) dir = "bench/results/full"
set terminal pngcairo size 1000,560 font "DejaVu Sans,10" noenhanced
set datafile missing NaN
set grid ytics
set key top left
set style fill solid 0.85 border -1
set boxwidth 0.9
f(n) = dir . "/" . n

# 1. Uncontended acquire+release, read and write, log scale.
set output f("uncontended.png")
set title "Uncontended acquire+release, one worker (median, bars: min-max of runs)"
set ylabel "ns per acquire+release (log scale)"
set logscale y
set yrange [1:*]
set style data histogram
set style histogram errorbars gap 2 lw 1
plot f("uncontended.dat") using 2:3:4:xtic(1) title "read" lc rgb "#4c72b0", \
     "" using 5:6:7 title "write" lc rgb "#dd8452"
unset logscale y
set yrange [*:*]

# 2. Aggregate throughput with 1-8 workers, three scenarios.
set output f("workers.png")
set terminal pngcairo size 1400,520 font "DejaVu Sans,10" noenhanced
set multiplot layout 1,3 title "Aggregate acquire+release pairs per second (median of runs), 2 CPUs"
set style data linespoints
set logscale y
set logscale x 2
set xtics (1,2,4,8)
set xrange [0.9:9]
set xlabel "workers (processes or threads)"
set ylabel "pairs per second (log scale)"
set key bottom left font ",8"
do for [s in "distinct onekey_write onekey_read"] {
    set title (s eq "distinct" ? "distinct keys, write" : s eq "onekey_write" ? "one key, write" : "one key, read")
    plot for [c=2:7] f("workers_" . s . ".dat") using 1:c with linespoints lw 2 pt 7 \
         title word("pidlock-shared pidlock-thread rwlock lock-dict flock-file PostgreSQL", c-1)
}
unset multiplot
unset logscale x
unset logscale y
unset xlabel
set xrange [*:*]
set xtics autofreq
set terminal pngcairo size 1000,560 font "DejaVu Sans,10" noenhanced
set key top left

# 3. Handoff latency.
set output f("handoff.png")
set title "From a writer's release to the blocked writer running"
set ylabel "µs (log scale)"
set logscale y
set style data histogram
set style histogram clustered gap 2
plot f("handoff.dat") using 2:xtic(1) title "median" lc rgb "#4c72b0", \
     "" using 3 title "p90" lc rgb "#55a868", "" using 4 title "p99" lc rgb "#c44e52"

# 4. Starvation: longest waits.
set output f("fairness.png")
set title "Longest wait of a writer under continuous readers, and of a reader under continuous writers"
set ylabel "ms (log scale); at the cap = gave up, starved"
plot f("fairness.dat") using 3:xtic(1) title "writer under 4 readers" lc rgb "#c44e52", \
     "" using 5 title "reader under 4 writers" lc rgb "#4c72b0"
unset logscale y

# 5. Scale: fill and capacity.
set output f("scale.png")
set terminal pngcairo size 1200,480 font "DejaVu Sans,10" noenhanced
set multiplot layout 1,2
set style data linespoints
set title "As the table fills (capacity 10 000): median, bars min-max"
set xlabel "filled: (keys held + 1) / capacity, %"
set ylabel "ns per write acquire+release"
set yrange [0:*]
plot f("fill.dat") using 1:2:3:4 with yerrorlines lw 2 pt 7 title "shared table"
set title "As capacity grows"
set logscale x 10
set xlabel "capacity (slots)"
set y2label "shared memory bytes per slot"
set y2tics
set ytics nomirror
plot f("capacity.dat") using 1:2 lw 2 pt 7 title "ns, empty", \
     "" using 1:3 lw 2 pt 7 title "ns, half full", \
     "" using 1:4 axes x1y2 lw 2 pt 5 dt 2 title "bytes/slot, key max 1024", \
     "" using 1:5 axes x1y2 lw 2 pt 5 dt 2 title "bytes/slot, key max 256"
unset multiplot
unset logscale x
unset y2tics
unset y2label
set ytics mirror
unset xlabel
set yrange [*:*]
set terminal pngcairo size 1000,560 font "DejaVu Sans,10" noenhanced

# 6. httpd On/Off.
if (system("test -f " . f("httpd.dat") . " && echo y") eq "y") {
    set output f("httpd.png")
    set title "httpd, 1 KiB static file: requests/s with PidLock On / Off (median of rounds, bars min-max)"
    set ylabel "On / Off"
    set yrange [0.6:1.2]
    set style data histogram
    set style histogram errorbars gap 2 lw 1
    set xtics rotate by -20
    plot f("httpd.dat") using 2:3:4:xtic(1) notitle lc rgb "#4c72b0", \
         0.98 with lines dt 2 lw 2 lc rgb "#c44e52" title "target 0.98", \
         1.0 with lines lw 1 lc rgb "black" notitle
    set yrange [*:*]
    set xtics norotate
}

# 7. Slow backend.
if (system("test -f " . f("slow.dat") . " && echo y") eq "y") {
    set output f("slow.png")
    set title "Slow backend (10 ms per request), 32 clients: serialization costs only where keys collide"
    set ylabel "requests/s"
    set style data histogram
    set style histogram clustered gap 2
    plot f("slow.dat") using 2:xtic(1) title "PidLock On" lc rgb "#4c72b0", \
         "" using 3 title "PidLock Off" lc rgb "#dd8452"
}
