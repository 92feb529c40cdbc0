"""Generated national directory extracts (no real rows are public: personal data), with the real
31-column header (tests/data/extraction-header-31-columns.txt), for the directory tests and
benches.

    rows = base_rows(20000)                  # deterministic
    new, delta = variant(rows, adds=200, removes=200, changes=200)
    write("Extraction_...txt", rows)

    python3 tests/e2e/gen_extract.py N OUT [--variant OUT2 PERCENT]

Rows look like the real file: PER/ORG/APP/CAB mailboxes, accents in names (base64 in LDIF),
empty columns, and about 2 % of the addresses on two lines (two activities)."""

import os
import random
import sys
import unicodedata

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
HEADER_FILE = os.path.join(REPO, "tests", "data", "extraction-header-31-columns.txt")

PROFESSIONS = [("10", "Médecin"), ("60", "Infirmier"), ("40", "Chirurgien-Dentiste"),
               ("21", "Pharmacien"), ("70", "Masseur-Kinésithérapeute"), ("50", "Sage-Femme")]
SERVICES = ["Cardiologie", "Urgences", "Pédiatrie", "Radiologie", "", "", "Secrétariat médical"]
FIRST = ["Claire", "Jean", "Hélène", "François", "Zoé", "Luc", "Anne-Sophie", "Élodie", "Noël"]
LAST = ["MARTIN", "BERNARD", "DUBOIS", "THOMAS", "ROBERT", "PETIT", "DURAND", "LEROY", "MOREAU"]
TOWNS = [("31059", "31059 TOULOUSE CEDEX 9", "31"), ("69003", "69003 LYON", "69"),
         ("75012", "75012 PARIS", "75"), ("13005", "13005 MARSEILLE", "13")]


def ascii_lower(s):
    return unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode().lower()


def header():
    with open(HEADER_FILE, encoding="utf-8") as f:
        return f.read().strip("\r\n")


def row(i, rnd, structure=None):
    """One line (31 fields) for address number i."""
    kind = rnd.choices(["PER", "ORG", "APP", "CAB"], [80, 14, 3, 3])[0]
    etab = i % 997
    f = [""] * 31
    f[0] = kind
    f[5] = "1"
    f[6] = structure or "1%08d" % (etab * 7 + 1)
    f[7] = rnd.choice(SERVICES)
    f[17] = "O"
    f[18] = "CH ETABLISSEMENT %d" % etab
    town = TOWNS[etab % len(TOWNS)]
    f[22], f[24], f[25] = str(1 + etab % 90), "R", "DE LA SANTE"
    f[27], f[28], f[29], f[30] = town[1], town[0], town[2], "FRANCE"
    if kind in ("PER", "CAB"):
        first, last = FIRST[i % len(FIRST)], LAST[(i // 7) % len(LAST)] + str(i)
        code, prof = PROFESSIONS[i % len(PROFESSIONS)]
        f[1] = "%s.%s@etab-%d.mssante.fr" % (ascii_lower(first), last.lower(), etab)
        f[2], f[3], f[4] = "8", "1%010d" % i, "81%010d" % i
        f[8], f[9], f[10] = rnd.choice(["DR", "M", "MME", ""]), last, first
        f[11], f[12], f[13], f[14] = "C", "Civil", code, prof
    else:
        f[1] = "%s%d@etab-%d.mssante.fr" % ("secretariat" if kind == "ORG" else "app", i, etab)
    return f


def base_rows(n, seed=7):
    """n addresses; every 50th gets a second line (another structure)."""
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        r = row(i, rnd)
        rows.append(r)
        if i % 50 == 49:
            second = list(r)
            second[6], second[18] = "1%08d" % (900000 + i), "CABINET %d" % i
            rows.append(second)
    return rows


def variant(rows, adds, removes, changes, seed=11):
    """A later extract: `removes` addresses gone, `changes` with another profession label,
    `adds` new ones. Returns (new rows, {"added": [...], "removed": [...], "changed": [...]})."""
    rnd = random.Random(seed)
    addresses = list(dict.fromkeys(r[1] for r in rows))
    picked = rnd.sample(addresses, removes + changes)
    removed, changed = set(picked[:removes]), set(picked[removes:])
    out = []
    for r in rows:
        if r[1] in removed:
            continue
        if r[1] in changed:
            r = list(r)
            r[14] = "Médecin généraliste (changé)"
        out.append(r)
    start = 10_000_000
    added = []
    for k in range(adds):
        r = row(start + k, rnd)
        out.append(r)
        added.append(r[1])
    return out, {"added": added, "removed": sorted(removed), "changed": sorted(changed)}


def write(path, rows, eol="\r\n"):
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(header() + eol)
        for r in rows:
            f.write("|".join(r) + eol)


if __name__ == "__main__":
    n, out = int(sys.argv[1]), sys.argv[2]
    rows = base_rows(n)
    write(out, rows)
    if len(sys.argv) > 3 and sys.argv[3] == "--variant":
        out2, pct = sys.argv[4], float(sys.argv[5])
        k = max(1, int(n * pct / 100 / 3))
        new, _ = variant(rows, k, k, k)
        write(out2, new)
