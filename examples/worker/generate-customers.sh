#!/bin/sh
# Prints the sample data the example worker imports: a CSV of made-up customers,
# "id,name,email,country" then ROWS rows (default 7000). Deterministic: the same ROWS always gives
# the same bytes (no random numbers, integer arithmetic only), so the image built from it
# (tests/cluster/images.sh) changes only when this file does. POSIX sh and awk: runs under
# busybox too.
#
#   examples/worker/generate-customers.sh [ROWS] >customers.csv
set -eu

rows="${1:-7000}"
case "$rows" in '' | *[!0-9]*) echo "usage: $0 [ROWS]" >&2; exit 2 ;; esac

awk -v rows="$rows" 'BEGIN {
  nf = split("Ada Alan Barbara Claude Dennis Edsger Frances Grace Hedy Ivan John Katherine " \
             "Leslie Margaret Niklaus Radia Shafi Sophie Tim Vint", first, " ")
  nl = split("Allen Bartik Cerf Dijkstra Hamilton Hopper Johnson Kahn Knuth Lamarr Lamport " \
             "Liskov Lovelace McCarthy Perlman Ritchie Shannon Sutherland Turing Wilson Wirth", last, " ")
  nc = split("AR AU BR CA DE ES FR GB IN IT JP KE MX NG NL NZ PL SE US ZA", country, " ")
  nd = split("example.com example.net example.org", domain, " ")
  print "id,name,email,country"
  for (id = 1; id <= rows; id++) {
    # Strides coprime with the list lengths walk through every combination.
    f = first[(id * 7) % nf + 1]
    l = last[(id * 13 + int(id / nf)) % nl + 1]
    printf "%d,%s %s,%s.%s.%d@%s,%s\n", id, f, l, tolower(f), tolower(l), id,
      domain[id % nd + 1], country[(id * 31 + int(id / nc)) % nc + 1]
  }
}'
