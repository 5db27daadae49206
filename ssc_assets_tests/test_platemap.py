import pytest

from ssc_assets.core.ingest.platemap import PlateMapError, read_platemap


def write(tmp_path, text):
    p = tmp_path / "platemap.csv"
    p.write_text(text)
    return p


def test_valid_platemap_keeps_extra_columns(tmp_path):
    p = write(tmp_path, "well,donor_id,condition,group,age\nB3,D1,ssc,SSCHL,51\nB02,D2,HC,hc,40\n")
    df = read_platemap(p)
    assert df["Metadata_Well"].tolist() == ["B02", "B03"]
    assert df["Metadata_Condition"].tolist() == ["HC", "SSc"]
    assert df["Metadata_Group"].tolist() == ["HC", "SSCHL"]
    assert df["Metadata_age"].tolist() == ["40", "51"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("well,donor_id,group\nB02,D1,HC\n", "missing required column(s) ['condition']"),
        ("well,donor_id,condition,group\nZ99,D1,HC,HC\n", "bad well 'Z99'"),
        ("well,donor_id,condition,group\nB02,D1,sick,HC\n", "unknown condition"),
        ("well,donor_id,condition,group\nB02,D1,SSc,LATE\n", "unknown group"),
        ("well,donor_id,condition,group\nB02,D1,HC,SSC\n", "condition and group disagree"),
        ("well,donor_id,condition,group\nB02,D1,HC,HC\nB2,D2,HC,HC\n", "duplicate wells ['B02']"),
    ],
)
def test_bad_platemaps_name_the_file(tmp_path, text, message):
    p = write(tmp_path, text)
    with pytest.raises(PlateMapError) as err:
        read_platemap(p)
    assert str(p) in str(err.value) and message in str(err.value)
