"""The PACS side of medsi: send outputs to a PACS, or serve as a node that analyses series.

``medsi send`` and ``medsi serve`` (DESIGN.md section 5) call these functions.
"""

from medsi.pacs.destination import Destination, check_ae_title, parse_destination
from medsi.pacs.send import SendResult, SentObject, output_objects, send_outputs, stow_outputs
from medsi.pacs.serve import ACCEPTED_SOP_CLASSES, DicomNode, NodeConfig, SeriesOutcome

__all__ = [
    "Destination",
    "parse_destination",
    "check_ae_title",
    "SentObject",
    "SendResult",
    "output_objects",
    "send_outputs",
    "stow_outputs",
    "DicomNode",
    "NodeConfig",
    "SeriesOutcome",
    "ACCEPTED_SOP_CLASSES",
]
