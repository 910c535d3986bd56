"""A table of Nsight Compute's CSV (docs/data/gpu_next.sh's `ncu` step): one line a kernel
launch, its GPU time and the other metrics asked for, and the sum of the times of each call
(a call's launches are the lines between two of ncu's headers).

    python docs/data/ncu_table.py ncu.log > table.txt
"""
import collections
import csv
import io
import sys

SHORT = {"gpu__time_duration.sum": "us",
         "launch__registers_per_thread": "regs",
         "sm__warps_active.avg.pct_of_peak_sustained_active": "occupancy %",
         "dram__throughput.avg.pct_of_peak_sustained_elapsed": "DRAM %",
         "lts__t_sectors.avg.pct_of_peak_sustained_elapsed": "L2 %",
         "l1tex__t_sector_hit_rate.pct": "L1 hit %",
         "lts__t_sector_hit_rate.pct": "L2 hit %",
         "sm__throughput.avg.pct_of_peak_sustained_elapsed": "SM %"}


def calls(text: str):
    """The CSV blocks of the log, one a profiled call."""
    block = []
    for line in text.splitlines():
        if line.startswith('"ID"'):
            if block:
                yield block
            block = [line]
        elif line.startswith('"') and block:
            block.append(line)
    if block:
        yield block


def main() -> None:
    for block in calls(open(sys.argv[1]).read()):
        launches = collections.OrderedDict()
        for row in csv.DictReader(io.StringIO("\n".join(block))):
            name = row["Kernel Name"].replace("void ", "").split("(")[0]
            launches.setdefault((row["ID"], name), {})[row["Metric Name"]] = row["Metric Value"]
        print("| kernel | " + " | ".join(SHORT.values()) + " |")
        print("|---" * (len(SHORT) + 1) + "|")
        total = 0.0
        for (_, name), m in launches.items():
            ns = float(m["gpu__time_duration.sum"].replace(",", ""))
            total += ns
            cells = [f"{ns / 1e3:.1f}"] + [m.get(k, "-") for k in list(SHORT)[1:]]
            print(f"| {name[:48]} | " + " | ".join(cells) + " |")
        print(f"\nsum of the launches' times: {total / 1e3:.1f} us\n")


if __name__ == "__main__":
    main()
