"""The built-in studies, one module each, registered on import in the order ``kneuron report`` shows them.

Adding a study: a module here (or anywhere: a user's own module) with a :class:`~kneuron.studies.base.Study`
subclass decorated with :func:`~kneuron.studies.registry.register_study`, and, for a built-in one, its import
below. See CONTRIBUTING.md.
"""

from kneuron.studies.catalog import paper  # noqa: F401  (suppress_amplify, generic, layers, discrimination)

from kneuron.studies.catalog import estimators  # noqa: F401  (isort: skip)
from kneuron.studies.catalog import editing  # noqa: F401  (isort: skip)
from kneuron.studies.catalog import edit_robustness  # noqa: F401  (isort: skip)
from kneuron.studies.catalog import languages  # noqa: F401  (isort: skip)
from kneuron.studies.catalog import consistency  # noqa: F401  (isort: skip)
from kneuron.studies.catalog import interactions  # noqa: F401  (isort: skip)
from kneuron.studies.catalog import vocabulary  # noqa: F401  (isort: skip)
from kneuron.studies.catalog import tracing  # noqa: F401  (isort: skip)
from kneuron.studies.catalog import edit_methods  # noqa: F401  (isort: skip)
