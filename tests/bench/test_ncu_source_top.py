"""bench/ncu_source_top.py ranks the SASS instructions of Nsight Compute's source-page CSV by warp-stall samples
and sums them by opcode; a CSV without the columns it needs is refused."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from ncu_source_top import main, opcode, read_rows, render, stall_table  # noqa: E402

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
