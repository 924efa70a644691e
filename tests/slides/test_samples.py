import pytest

from wsidistill.slides.samples import SampleSheetError, check_roles, load_sample_sheet

HEADER = "slide_id\tpath\tannotations\tpatient_id\tsplit\n"


@pytest.fixture
def cohort(tmp_path):
    for name in ("a.svs", "b.svs", "c.svs", "a.geojson"):
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def write(cohort, rows):
    path = cohort / "slides.tsv"
    path.write_text(HEADER + "".join("\t".join(r) + "\n" for r in rows))
    return path


def test_valid_sheet_resolves_paths_against_its_directory(cohort):
    sheet = load_sample_sheet(write(cohort, [("a", "a.svs", "a.geojson", "p1", "train"),
                                             ("b", "b.svs", "", "p2", "test")]))
    assert sheet.loc["a", "path"] == str(cohort / "a.svs")
    assert sheet.loc["a", "annotations"] == str(cohort / "a.geojson")
    assert sheet.loc["b", "annotations"] == ""


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([("a", "missing.svs", "", "p1", "train")], r"`path` files not found: \[.*missing\.svs"),
        ([("a", "a.svs", "", "p1", "train"), ("a", "b.svs", "", "p2", "val")], r"duplicate slide_id values \['a'\]"),
        ([("a", "a.svs", "", "p1", "training")], r"unknown split values \['training'\]"),
        ([("a", "a.svs", "", "p1", "train"), ("b", "b.svs", "", "p1", "test")], r"patients \['p1'\].*more than one split"),
        ([("a", "a.svs", "nope.geojson", "p1", "train")], r"`annotations` files not found"),
    ],
)
def test_bad_sheets_are_caught_with_the_file_named(cohort, rows, message):
    path = write(cohort, rows)
    with pytest.raises(SampleSheetError, match=message) as err:
        load_sample_sheet(path)
    assert str(path) in str(err.value)


def test_missing_columns_and_missing_sheet(cohort, tmp_path):
    path = cohort / "slides.tsv"
    path.write_text("slide_id\tpath\na\ta.svs\n")
    with pytest.raises(SampleSheetError, match=r"missing columns \['patient_id', 'split'\]"):
        load_sample_sheet(path)
    with pytest.raises(SampleSheetError, match="not found.*Set `samples`"):
        load_sample_sheet(tmp_path / "none.tsv")


def test_mpp_override_must_be_positive(cohort):
    path = cohort / "slides.tsv"
    path.write_text("slide_id\tpath\tpatient_id\tsplit\tmpp\na\ta.svs\tp1\ttrain\t-1\nb\tb.svs\tp2\ttest\t0.5\n")
    with pytest.raises(SampleSheetError, match=r"`mpp` must be a positive number \(slides \['a'\]\)"):
        load_sample_sheet(path)


def test_ids_outside_letters_digits_dot_underscore_dash_are_rejected_naming_their_lines(cohort):
    path = write(cohort, [("ok.1_a-b", "a.svs", "", "p1", "train"), ("a b", "b.svs", "", "p2", "val"),
                          ("x;touch PWNED", "c.svs", "", "p3", "test"), ("-rf", "c.svs", "", "p4", "test")])
    with pytest.raises(SampleSheetError) as err:
        load_sample_sheet(path)
    message = str(err.value)
    assert "'a b' (line 3), 'x;touch PWNED' (line 4), '-rf' (line 5)" in message and "ok.1_a-b" not in message
    assert "letters, digits, '.', '_' and '-'" in message and str(path) in message


def test_an_empty_sheet_names_the_file(cohort):
    path = cohort / "slides.tsv"
    path.write_bytes(b"")
    with pytest.raises(SampleSheetError, match=f"sample sheet {path} is empty"):
        load_sample_sheet(path)


def test_slides_that_cannot_serve_their_split_are_named_with_the_choices(cohort):
    """Issue 17, kind 7, from the sheet alone: a train slide with no labels; a slide the sheet says is below the
    Teacher's magnification (from `objective_power`, or from `mpp` snapped to its standard objective)."""
    path = cohort / "slides.tsv"
    path.write_text("slide_id\tpath\tannotations\tpatient_id\tsplit\tobjective_power\tmpp\n"
                    "a\ta.svs\ta.geojson\tp1\ttrain\t\t\n"
                    "b\tb.svs\t\tp2\ttrain\t\t\n"
                    "c\tc.svs\t\tp3\ttest\t20\t\n"
                    "d\tc.svs\t\tp4\tval\t\t0.5\n"
                    "e\tc.svs\t\tp5\ttest\t\t0.2265\n")
    sheet = load_sample_sheet(path)
    with pytest.raises(SampleSheetError) as caught:
        check_roles(sheet, path, 40)
    message = str(caught.value)
    assert message.startswith(f"{path}: training slides ['b'] have no `annotations` or `label_mask`")
    assert "move them to the test split" in message
    assert "slides c (20x from `objective_power`), d (20x from `mpp` 0.5) are below the Teacher's 40x" in message
    assert "'e'" not in message and " e (" not in message  # 0.2265 um/px is a 40x scan
    check_roles(sheet.drop(["b", "c", "d"]), path, 40)  # unlabelled test slides are fine
    check_roles(sheet.drop(["b"]), path, 20)  # a 20x study reads them all
