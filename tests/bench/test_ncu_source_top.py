"""bench/ncu_source_top.py ranks the SASS instructions of Nsight Compute's source-page CSV by warp-stall samples
and sums them by opcode; a CSV without the columns it needs is refused."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from ncu_source_top import main, opcode, read_rows, render, render_listing, stall_table  # noqa: E402

CSV = """\
"Kernel Name","w4a16_decode_kernel"
"Address","Source","Warp Stall Sampling (All Samples)","Warp Stall Sampling (Not-issued Samples)","Instructions Executed"
"0x7f00","LDC R1, c[0x0][0x28]","2","1","2,048"
"0x7f10","@!P0 BAR.SYNC.DEFER_BLOCKING 0x0","1,500","1,400","2,048"
"0x7f20","UCGABAR_WAIT","600","600","2,048"
"0x7f30","LDGSTS.E.BYPASS.128 [R15], desc[UR8][R12.64]","0","0","4,096"
"0x7f40","BAR.SYNC.DEFER_BLOCKING 0x0","898","800","2,048"
"""


def test_instructions_ranked_by_stall_samples_and_summed_by_opcode():
    header, rows = read_rows(CSV.splitlines())
    table, total = stall_table(header, rows)
    assert total == 3000 and len(table) == 4  # the instruction without samples is left out
    text = render(table, total, top=2)
    lines = text.splitlines()
    assert lines[0] == "3000 warp-stall samples over 4 instructions"
    assert lines[4] == "| 50.0 % | 1500 | 0x7f10 | `@!P0 BAR.SYNC.DEFER_BLOCKING 0x0` |"
    assert lines[5] == "| 29.9 % | 898 | 0x7f40 | `BAR.SYNC.DEFER_BLOCKING 0x0` |"
    assert "| BAR | 79.9 % | 2398 |" in text and "| UCGABAR_WAIT | 20.0 % | 600 |" in text


def test_opcode_drops_predicate_and_modifiers():
    assert opcode("@!P0 LDG.E.128 R4, desc[UR4][R2.64]") == "LDG"
    assert opcode("UCGABAR_WAIT") == "UCGABAR_WAIT"


def test_a_csv_without_the_sample_column_is_refused(tmp_path, capsys):
    f = tmp_path / "details.csv"
    f.write_text('"Address","Source","Instructions Executed"\n"0x1","NOP","1"\n')
    assert main([str(f)]) == 1
    assert "no 'Warp Stall Sampling (All ...)' column" in capsys.readouterr().err
    f.write_text('"ID","Metric Name"\n"0","Duration"\n')
    assert main([str(f)]) == 1
    assert "not the CSV of ncu's source page" in capsys.readouterr().err


LISTING_CSV = """\
"Address","Source","Warp Stall Sampling (All Samples)","Instructions Executed","stall_barrier","stall_no_inst","stall_wait","stall_barrier (Not Issued)"
"0x7f00","LDC R1, c[0x0][0x28]","3","2,048","0","3","0","0"
"0x7f10","IMAD R2, R3, R4, RZ","0","2,048","0","0","0","0"
"0x7f40","BAR.SYNC.DEFER_BLOCKING 0x0","10","2,048","8","0","2","9"
"0x8000","STG.E [R2.64], R5","5","256","0","4","1","0"
"""


def test_the_listing_keeps_address_order_and_names_each_line_s_stall_reasons():
    header, rows = read_rows(LISTING_CSV.splitlines())
    lines = render_listing(header, rows).splitlines()
    assert lines[2] == "| 0x0 | 3 | 2048 | `LDC R1, c[0x0][0x28]` | no_inst 3 |"
    assert lines[3] == "| 0x40 | 10 | 2048 | `BAR.SYNC.DEFER_BLOCKING 0x0` | barrier 8, wait 2 |"  # not-issued column left out
    assert lines[4] == "| 0x100 | 5 | 256 | `STG.E [R2.64], R5` | no_inst 4, wait 1 |"
    assert len(lines) == 2 + 3 + 1 + 2 + 3  # no line for the instruction without samples; three reasons summed
    assert lines[-3:] == ["| barrier | 8 |", "| no_inst | 7 |", "| wait | 3 |"]


def test_a_gzipped_csv_is_read(tmp_path, capsys):
    import gzip
    f = tmp_path / "source.csv.gz"
    with gzip.open(f, "wt") as g:
        g.write(LISTING_CSV)
    assert main([str(f), "--listing"]) == 0
    assert "| 0x40 | 10 | 2048 |" in capsys.readouterr().out
