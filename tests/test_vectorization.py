"""vectorization prints a batch size × form grid: one row per m, one column per form."""

from experiments import vectorization


def test_grid_has_one_row_per_batch_size_and_one_column_per_form():
    rows = [{"direction": d, "m": m, "form": f, "us_per_example": 1000 * i + 10 * m + j,
             "compile_seconds": 0.5 * j + (m == 16)}
            for i, d in enumerate(("forward", "backward")) for m in (16, 1, 4)
            for j, f in enumerate(vectorization.FORMS)]
    tables = vectorization.grid_tables(rows)
    assert list(tables) == ["forward: µs per example", "backward (mean gradient): µs per example",
                            "compile seconds at m = 16"]
    forward = tables["forward: µs per example"]
    assert [r["m"] for r in forward] == [1, 4, 16]
    assert all(list(r) == ["m", *vectorization.FORMS] for r in forward)
    assert forward[1] == {"m": 4, "loop": 40, "lax.map": 41, "vmap": 42, "matrix": 43}
    assert tables["backward (mean gradient): µs per example"][2]["matrix"] == 1163
    compile_rows = tables["compile seconds at m = 16"]
    assert compile_rows[0] == {"direction": "forward", "loop": 1, "lax.map": 1.5, "vmap": 2.0,
                               "matrix": 2.5}
    assert len(compile_rows) == 2
