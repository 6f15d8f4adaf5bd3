"""Chinese fault-report classification for RelayDesk (standalone: no platform or storage imports).

    from nlp import Classifier, SopLibrary
    result = Classifier.default().classify("2号线变频器报E03,整条线停了")
    card = SopLibrary.default().lookup(result)
"""

from .classifier import Classification, Classifier
from .sop import SopCard, SopLibrary
from .taxonomy import TaxonomyError, load_taxonomy

__all__ = ["Classifier", "Classification", "TaxonomyError", "load_taxonomy", "SopCard", "SopLibrary"]
