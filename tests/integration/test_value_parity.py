"""One row, one outcome: the same rows sent to an `api = insertall` and an
`api = storage` destination with the same schema end the same way: the same
rows stored with the same values (as the emulator stores them; on the storage
path it decodes the protobuf rows with Google's library), and the same rows
dead-lettered with the same reason class.

The table is generated: per type, the cross product of value parts (years,
months, days, clocks, fractions, zones, spellings), valid and invalid alike,
so that nothing in it was picked to pass."""
import itertools
import json
import os
import subprocess
import urllib.parse

from relaytest import TOOLS, Emulator, Producer, RelayTest, deliver_to, wait_for, write_to

SCHEMA = [
    {"name": "id", "type": "INTEGER", "mode": "REQUIRED"},
    {"name": "b", "type": "BOOLEAN"},
    {"name": "s", "type": "STRING"},
    {"name": "d", "type": "DATE"},
    {"name": "t", "type": "TIME"},
    {"name": "dt", "type": "DATETIME"},
    {"name": "ts", "type": "TIMESTAMP"},
    {"name": "i", "type": "INTEGER"},
    {"name": "n", "type": "NUMERIC"},
    {"name": "j", "type": "JSON"},
    {"name": "np", "type": "NUMERIC", "precision": "5", "scale": "2"},
    {"name": "ne", "type": "NUMERIC", "roundingMode": "ROUND_HALF_EVEN"},
    {"name": "bn", "type": "BIGNUMERIC"},
]


def edge_values():
    """(column, JSON value) pairs, generated."""
    out = []
    for v in [True, False, "true", "false", "TRUE", "False", "tRuE", "yes", "1", "0", "", 1, 0, None]:
        out.append(("b", v))
    for v in ["x", "", 123, -1.5, 0, True, False, "123", 1e3, [1], {"a": 1}]:
        out.append(("s", v))
    years, months, days = ["2024", "0001", "9999", "0000", "24"], ["1", "01", "12", "13", "00"], ["2", "02", "29", "31", "0"]
    for y, m, d in itertools.product(years, months, days):
        out.append(("d", f"{y}-{m}-{d}"))
    clocks = ["3:04:05", "03:04:05", "1:2:3", "23:59:59", "24:00:00", "12:60:00", "12:34:60", "12:34"]
    fracs = ["", ".1", ".123456", ".1234567", "."]
    for c, f in itertools.product(clocks, fracs):
        out.append(("t", c + f))
    for d, sep, c in itertools.product(["2024-01-02", "2024-1-2", "2023-02-29"], ["T", " ", "t", "X"],
                                       ["3:04:05", "03:04:05.123456", "03:04:05.1234567", "03:04", "03:04.5"]):
        out.append(("dt", d + sep + c))
    out.append(("dt", "2024-01-02"))
    out.append(("dt", "2024-01-02T03:04:05Z"))
    for c, z in itertools.product(["2024-01-02T03:04:05", "2024-01-02 3:4:5.123456", "2024-01-02T03:04:05.1234567"],
                                  ["Z", "z", "", " UTC", "UTC", "+01:00", "-0530", "+2:00", "+14:00", "+15:00",
                                   "+2:0", " PST", "+241", "+0241", "+2:41", "\t-1", "  Z"]):
        out.append(("ts", c + z))
    for v in [0, 1700000000, 1700000000.5, -1.5, 253402300800, "1700000000"]:
        out.append(("ts", v))
    for i, f in itertools.product([0, 17000, -1], [0.5, 0.123456, 0.1234567, 0.0000001, 1e-6]):
        out.append(("ts", i + f if i >= 0 else i - f))
    for v in [0, -1, 9223372036854775807, "12", "1.0", 1.5, "x", True, 1.0, 1e3, "+7", "-0", " 1"]:
        out.append(("i", v))
    for v in ["1.5", "-0.000000001", "0.0000000001", "99999999999999999999999999999.999999999",
              "100000000000000000000000000000", 1.25, "1e3", "abc"]:
        out.append(("n", v))
    # rounding past the scale: integer parts x fractions (ties, just under, just over, carries)
    ints, tails = ["0", "-0", "1", "-2", "999", "99999999999999999999999999999"], \
        ["", ".5", ".005", ".0049999999996", ".995", ".9999999995", ".1234567885", ".12345678850001",
         ".1234567895", ".00000000049"]
    for col, i, t in itertools.product(["n", "np", "ne"], ints, tails):
        out.append((col, i + t))
    for col, v in itertools.product(["n", "ne"], ["5e-10", "1.5e-9", "-2.5e-9", 2.5e-9, 0.1234567885]):
        out.append((col, v))
    for v in ["0.000000000000000000000000000000000000005", "-0.0000000000000000000000000000000000000049",
              "578960446186580977117854925043439539266.349923328202820197287920039565648199675", 1e-39]:
        out.append(("bn", v))
    for v in [{"a": [1, 2]}, [1, "x"], "text", 12, True, None]:
        out.append(("j", v))
    return out


class ValueParityTest(RelayTest):
    def test_insertall_and_storage_give_every_row_the_same_fate(self):
        emu = Emulator(self, grpc=True).start()
        for t in ("par_ia", "par_sw"):
            emu.create_table("proj.logs." + t, SCHEMA)
        d = self.daemon(dests=[("par_ia", deliver_to(emu, table="par_ia")),
                               ("par_sw", write_to(emu, table="par_sw"))], default_table="par_ia")
        d.start()
        values = edge_values()
        self.assertGreaterEqual(len(values), 200)
        lines = [json.dumps({"id": k, col: v}) for k, (col, v) in enumerate(values)]
        for table in ("par_ia", "par_sw"):
            p = Producer(d.sock)
            p.send_lines(["@" + table] + lines)
            self.assertEqual(p.finish(), len(lines) + 1)
            p.close()

        def stored(table):
            q = urllib.parse.quote("proj.logs." + table)
            return {r["json"]["id"]: r["json"] for r in emu._call("GET", f"/_emu/rows?table={q}&canonical=1")["rows"]}

        def dead():
            r = subprocess.run([os.path.join(TOOLS, "dlq_dump"), d.spool], stdout=subprocess.PIPE,
                               check=True, timeout=60)
            out = {"par_ia": {}, "par_sw": {}}
            for l in r.stdout.splitlines():
                e = json.loads(l)
                out[e["dest"]][json.loads(e["row"])["id"] if isinstance(e["row"], str) else e["row"]["id"]] = e["reason"]
            return out

        def settled():
            dl = dead()
            return all(len(stored(t)) + len(dl[t]) == len(lines) for t in ("par_ia", "par_sw"))
        wait_for(settled, 120, "every row stored or dead-lettered on both paths", interval=0.5)
        ia, sw, dl = stored("par_ia"), stored("par_sw"), dead()
        diffs = []
        for k, (col, v) in enumerate(values):
            a = ("stored", ia[k].get(col)) if k in ia else ("dead", dl["par_ia"].get(k))
            b = ("stored", sw[k].get(col)) if k in sw else ("dead", dl["par_sw"].get(k))
            if a != b:
                diffs.append(f"{col}={json.dumps(v)}: insertall {a}, storage {b}")
        print(f"\n  {len(values)} edge rows: {len(ia)} stored, {len(dl['par_ia'])} dead-lettered on "
              f"insertAll; {len(sw)} / {len(dl['par_sw'])} on Storage Write; {len(diffs)} differ")
        self.assertEqual(diffs, [], "\n".join(diffs))
