from kneuron.facts.fact import Fact
from kneuron.facts.languages import fact_key, language_of, with_language


def test_language_suffix_round_trip():
    assert language_of("capital:France@fr") == "fr"
    assert fact_key("capital:France@fr") == "capital:France"
    assert with_language("capital:France", "zh") == "capital:France@zh"
    assert language_of(with_language("capital:Côte d'Ivoire", "pt-BR")) == "pt-BR"


def test_ids_without_a_language():
    fact = Fact("France", "capital", "Paris", ("The capital of [X] is [Y].",))
    assert language_of(fact) is None
    assert fact_key(fact) == "capital:France"
    assert language_of("email:someone@example.com") is None  # an @ that is not a language code


def test_in_several_languages_keeps_keys_with_enough_versions():
    from kneuron.facts.languages import in_several_languages

    def fact(subject, language, answer="A"):
        return Fact(subject, "capital", answer, ("The capital of [X] is [Y].",), id=f"capital:{subject}@{language}")

    facts = [fact("France", "en"), fact("France", "zh"), fact("Peru", "en"), fact("Japan", "en"),
             fact("Japan", "fr"), fact("Japan", "de"), Fact("Chile", "capital", "Santiago", ("[X]: [Y].",))]
    assert [f.id for f in in_several_languages(facts)] == [
        "capital:France@en", "capital:France@zh", "capital:Japan@en", "capital:Japan@fr", "capital:Japan@de"]
    assert [f.id for f in in_several_languages(facts, 3)] == ["capital:Japan@en", "capital:Japan@fr",
                                                              "capital:Japan@de"]
