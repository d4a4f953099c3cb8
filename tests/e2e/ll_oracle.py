#!/usr/bin/env python3
"""Independent LL-HLS check of saved media playlists, with the `m3u8` library (PyPI
`m3u8`, Debian `python3-m3u8`), not with anything of Sluice's.

    ll_oracle.py DIR     # every *.m3u8 in DIR; exit 1 with one line per violation

Per playlist: it parses; EXT-X-SERVER-CONTROL has CAN-BLOCK-RELOAD=YES, PART-HOLD-BACK of
at least 3 x PART-TARGET, HOLD-BACK of at least 3 x TARGETDURATION and CAN-SKIP-UNTIL of at
least 6 x TARGETDURATION; every part lasts at most PART-TARGET; a live playlist ends with a
preload hint of type PART and has rendition reports; a delta update skips only segments
older than CAN-SKIP-UNTIL. Prints `checked N playlists, M parts`.
"""
import pathlib
import sys

import m3u8

EPS = 1e-6


def check(path, problems):
    text = path.read_text()
    try:
        pl = m3u8.loads(text)
    except Exception as e:  # noqa: BLE001 - any parse failure is a finding
        problems.append(f"{path.name}: does not parse: {e}")
        return 0
    say = lambda msg: problems.append(f"{path.name}: {msg}")  # noqa: E731
    td = float(pl.target_duration or 0)
    if pl.part_inf is None or not pl.part_inf.part_target:
        say("no EXT-X-PART-INF")
        return 0
    target = float(pl.part_inf.part_target)
    sc = pl.server_control
    if sc is None or sc.can_block_reload != "YES":
        say("no CAN-BLOCK-RELOAD=YES")
    else:
        if (sc.part_hold_back or 0) + EPS < 3 * target:
            say(f"PART-HOLD-BACK {sc.part_hold_back} < 3 x {target}")
        if (sc.hold_back or 0) + EPS < 3 * td:
            say(f"HOLD-BACK {sc.hold_back} < 3 x {td}")
        if (sc.can_skip_until or 0) + EPS < 6 * td:
            say(f"CAN-SKIP-UNTIL {sc.can_skip_until} < 6 x {td}")
    parts = 0
    for seg in pl.segments:
        for part in seg.parts:
            parts += 1
            if float(part.duration) > target + EPS:
                say(f"part {part.uri} lasts {part.duration} > {target}")
    if not pl.is_endlist:
        hint = pl.preload_hint
        if hint is None or hint.hint_type != "PART" or not hint.uri:
            say("live playlist without a PART preload hint")
        if not pl.rendition_reports:
            say("no rendition reports")
    # Without EXT-X-SKIP the library leaves a plain dict here.
    if getattr(pl.skip, "skipped_segments", None):
        kept = sum(float(s.duration) for s in pl.segments if s.uri)
        if kept + EPS < float(sc.can_skip_until):
            say(f"skipped too much: {kept} s kept < CAN-SKIP-UNTIL {sc.can_skip_until}")
    return parts


def main():
    folder = pathlib.Path(sys.argv[1])
    problems = []
    files = sorted(folder.glob("*.m3u8"))
    parts = sum(check(p, problems) for p in files)
    for p in problems[:50]:
        print(p)
    print(f"checked {len(files)} playlists, {parts} parts, {len(problems)} problems")
    sys.exit(1 if problems or not files else 0)


if __name__ == "__main__":
    main()
