import pyarrow as pa

from pipeline.stages.language import LanguageSettings, LanguageStage


def make(keep, min_score=0.0):
    stage = LanguageStage(LanguageSettings(keep=keep, min_score=min_score))
    stage.setup()
    return stage


TEXTS = ["a small dog is playing with a red ball in the garden",
         "un petit chien joue avec une balle rouge dans le jardin",
         "ein kleiner Hund spielt mit einem roten Ball im Garten",
         "公园里的一只小狗在草地上玩耍", None, "multi\nline english caption here"]


def test_real_fasttext_model_identifies_languages():
    out = make(keep=[]).process(pa.table({"text": pa.array(TEXTS, pa.string())}))
    assert out["language"].to_pylist() == ["en", "fr", "de", "zh", None, "en"]
    scores = out["language_score"].to_pylist()
    assert all(0.5 < s <= 1.0 for s in scores[:4]) and scores[4] == 0.0


def test_keep_list_and_min_score_give_reasons():
    out = make(keep=["en", "fr"]).process(pa.table({"text": pa.array(TEXTS, pa.string())}))
    assert out["_reason"].to_pylist() == [None, None, "wrong_language", "wrong_language",
                                          "wrong_language", None]
    out = make(keep=["en"], min_score=1.01).process(pa.table({"text": TEXTS[:1]}))
    assert out["_reason"].to_pylist() == ["low_language_score"]
