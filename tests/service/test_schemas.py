"""Wire models: specs validate their own fields; every model documents an example."""
from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

import api_schemas
from api_schemas import DistillationSpec, JobSpec, RepresentationSpec

spec_adapter = TypeAdapter(JobSpec)


def test_kind_selects_the_spec():
    rep = spec_adapter.validate_python({"kind": "representation", "teacher_id": "t", "dataset": "digits", "layer": "0"})
    assert isinstance(rep, RepresentationSpec) and rep.transfer == "auto" and rep.budget.time_limit_s == 600
    dis = spec_adapter.validate_python({"kind": "distillation", "teacher_id": "t", "dataset": "digits", "layer": "0"})
    assert isinstance(dis, DistillationSpec) and dis.methods == ["auto"]


@pytest.mark.parametrize("spec, field", [
    ({"kind": "representation", "teacher_id": "t", "dataset": "d", "layer": "0", "n_components": 0}, "n_components"),
    ({"kind": "representation", "teacher_id": "t", "dataset": "d", "layer": "0", "n_components": 2,
      "target_share": 0.9}, "not both"),
    ({"kind": "representation", "teacher_id": "t", "dataset": "d", "layer": "0", "transfer": "x" * 40}, "transfer"),
    ({"kind": "representation", "teacher_id": "t", "dataset": "d", "layer": "0", "colour": "red"}, "colour"),
    ({"kind": "distillation", "teacher_id": "t", "dataset": "d"}, "representation_job_id or a layer"),
    ({"kind": "distillation", "teacher_id": "t", "dataset": "d", "layer": "0", "methods": ["magic"]}, "methods"),
    ({"kind": "distillation", "teacher_id": "t", "dataset": "d", "layer": "0", "methods": []}, "methods"),
    ({"kind": "distillation", "teacher_id": "t", "dataset": "d", "layer": "0", "budget": {"epochs": 0}}, "epochs"),
    ({"kind": "distillation", "teacher_id": "t", "dataset": "d", "layer": "0", "options": {"lr": -1}}, "lr"),
    ({"kind": "distillation", "teacher_id": "t", "dataset": "d", "layer": "0", "options": {"augment_copies": 500}},
     "augment_copies"),
    ({"kind": "distillation", "teacher_id": "t", "dataset": "d", "layer": "0", "options": {"augment_noise": -1}},
     "augment_noise"),
    ({"kind": "distillation", "teacher_id": "t", "dataset": "d", "layer": "0",
      "options": {"coefficient_loss": "l1"}}, "coefficient_loss"),
    ({"kind": "distillation", "teacher_id": "t", "dataset": "d", "layer": "0", "options": {"huber_delta": 0}},
     "huber_delta"),
    ({"kind": "distillation", "teacher_id": "t", "dataset": "d", "layer": "0", "options": {"label_weight": 1e7}},
     "label_weight"),
    ({"kind": "distillation", "teacher_id": "t", "dataset": "d", "layer": "0", "options": {"label_weight": -1}},
     "label_weight"),
    ({"kind": "compress", "teacher_id": "t", "dataset": "d"}, "kind"),
])
def test_bad_specs_name_the_field(spec, field):
    with pytest.raises(ValidationError) as info:
        spec_adapter.validate_python(spec)
    # the error's location or its message names the field: not merely the echoed input, which
    # str(ValidationError) also prints and which contains the field's name in every case
    errors = info.value.errors()
    assert any(field in [str(p) for p in e["loc"]] or field in e["msg"] for e in errors), errors


def test_every_model_has_an_example():
    from pydantic import BaseModel

    models = [getattr(api_schemas, n) for n in api_schemas.__all__]
    # Page is the generic container: its concrete lists (TeacherList, ...) carry the examples
    models = [m for m in models if isinstance(m, type) and issubclass(m, BaseModel) and m is not api_schemas.Page]
    assert len(models) > 15
    for model in models:
        schema = model.model_json_schema()
        assert schema.get("examples"), model.__name__


def test_examples_validate():
    for name in ("RepresentationSpec", "DistillationSpec"):
        model = getattr(api_schemas, name)
        for example in model.model_config["json_schema_extra"]["examples"]:
            model.model_validate(example)
    api_schemas.JobOut.model_validate(api_schemas.JobOut.model_config["json_schema_extra"]["examples"][0])
    api_schemas.TeacherOut.model_validate(api_schemas.TeacherOut.model_config["json_schema_extra"]["examples"][0])


def test_loss_options_reach_the_training_settings():
    """The job's coefficient_loss and huber_delta are the library's settings (resolved as the
    library resolves them): what the worker builds from the spec's options."""
    from bregman.distillation.settings import TrainSettings

    dis = spec_adapter.validate_python({"kind": "distillation", "teacher_id": "t", "dataset": "d", "layer": "0",
                                        "options": {"coefficient_loss": "huber", "huber_delta": 0.5}})
    loss = TrainSettings.from_options(dis.options.model_dump()).loss_settings()
    assert (loss.coefficient_loss, loss.huber_delta) == ("huber", 0.5)
    plain = spec_adapter.validate_python({"kind": "distillation", "teacher_id": "t", "dataset": "d", "layer": "0"})
    settings = TrainSettings.from_options(plain.options.model_dump())
    assert settings.coefficient_loss == "auto"
    assert settings.with_copies(100).loss_settings().coefficient_loss == "huber"
    assert settings.with_copies(1000).loss_settings().coefficient_loss == "squared"
    # label_weight: undecided by default (decided per method and map size), a given 0 is kept
    assert settings.label_weight is None
    assert settings.with_label_weight_for("bregman", 1024).label_weight == pytest.approx(102.4)
    zero = spec_adapter.validate_python({"kind": "distillation", "teacher_id": "t", "dataset": "d", "layer": "0",
                                         "options": {"label_weight": 0}})
    assert TrainSettings.from_options(zero.options.model_dump()).with_label_weight_for("bregman", 1024).label_weight == 0
