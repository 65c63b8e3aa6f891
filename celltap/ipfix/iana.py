"""The IANA IPFIX information element registry, shipped as CSV, plus RFC 5103 reverse elements
and celltap's enterprise elements (celltap.ipfix.enterprise)."""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from pathlib import Path

REGISTRY_CSV = Path(__file__).with_name("ipfix_information_elements.csv")

# RFC 5103: PEN 29305 with a forward element's id means "that element, reverse direction".
REVERSE_PEN = 29305

# Elements RFC 5103 section 6.1 says have no reverse counterpart (they name the flow, not a direction).
NON_REVERSIBLE = frozenset(
    {
        148,
        145,
        149,
        137,
        210,
        239,
        138,
        141,
        143,
        144,
        146,
        160,
        161,
        162,
        163,
        164,
        165,
        166,
        167,
        168,
        169,
        170,
        171,
        172,
        173,
    }
)

FIXED_SIZES: dict[str, int] = {
    "unsigned8": 1,
    "unsigned16": 2,
    "unsigned32": 4,
    "unsigned64": 8,
    "signed8": 1,
    "signed16": 2,
    "signed32": 4,
    "signed64": 8,
    "float32": 4,
    "float64": 8,
    "boolean": 1,
    "macAddress": 6,
    "dateTimeSeconds": 4,
    "dateTimeMilliseconds": 8,
    "dateTimeMicroseconds": 8,
    "dateTimeNanoseconds": 8,
    "ipv4Address": 4,
    "ipv6Address": 16,
}


@dataclass(frozen=True, slots=True)
class InformationElement:
    """One information element: (enterprise number, id), IANA name, abstract data type, semantics."""

    element_id: int
    enterprise: int
    name: str
    data_type: str
    semantics: str = ""
    units: str = ""

    @property
    def default_length(self) -> int | None:
        """The element's full encoded length, or None when variable-length by nature."""
        return FIXED_SIZES.get(self.data_type)


class Registry:
    """Lookup of information elements by (enterprise, id) and by name."""

    def __init__(self, elements: list[InformationElement]) -> None:
        self._by_key: dict[tuple[int, int], InformationElement] = {}
        self._by_name: dict[str, InformationElement] = {}
        for ie in elements:
            self.add(ie)
        for ie in elements:
            if ie.enterprise == 0 and ie.element_id not in NON_REVERSIBLE:
                rev = InformationElement(
                    ie.element_id,
                    REVERSE_PEN,
                    "reverse" + ie.name[0].upper() + ie.name[1:],
                    ie.data_type,
                    ie.semantics,
                    ie.units,
                )
                self.add(rev)

    def add(self, ie: InformationElement) -> None:
        """Register an element (enterprise-specific ones too)."""
        self._by_key[(ie.enterprise, ie.element_id)] = ie
        self._by_name[ie.name] = ie

    def get(self, element_id: int, enterprise: int = 0) -> InformationElement:
        """The element for (enterprise, id); unknown ones get a stable placeholder name, octetArray type."""
        ie = self._by_key.get((enterprise, element_id))
        if ie is None:
            if enterprise == V9_VENDOR_PEN:
                name = f"ie{element_id | 0x8000}"  # NetFlow v9's vendor range, named by its v9 type
            elif enterprise == 0:
                name = f"ie{element_id}"
            else:
                name = f"ie{enterprise}_{element_id}"
            ie = InformationElement(element_id, enterprise, name, "octetArray")
        return ie

    def is_shared(self, ie: InformationElement) -> bool:
        """True for an element object the registry holds (not one made for an unknown id)."""
        return self._by_key.get((ie.enterprise, ie.element_id)) is ie or ie.name.endswith("_octets")

    def as_octets(self, ie: InformationElement) -> InformationElement:
        """The element relabelled `<name>_octets` of type octetArray (one shared object per element)."""
        cache = self.__dict__.setdefault("_octets", {})
        key = (ie.enterprise, ie.element_id)
        hit = cache.get(key)
        if hit is None:
            if len(cache) >= 65536:
                cache.clear()  # unknown elements are unbounded in number; known ones are a few hundred
            hit = cache[key] = InformationElement(
                ie.element_id, ie.enterprise, f"{ie.name}_octets", "octetArray"
            )
        return hit

    def by_name(self, name: str) -> InformationElement:
        """The element with this IANA name (KeyError if unknown)."""
        return self._by_name[name]

    def __len__(self) -> int:
        return len(self._by_key)


# NetFlow v9 field types from 32768 up are vendor-defined (Cisco NSEL uses 40000+); IPFIX spends that
# bit on "enterprise number follows".  To carry such a field in an IPFIX template set (the form the
# collector stores templates in and sends to the nodes) it becomes element (type & 0x7FFF) of this
# enterprise number, which IANA never assigns (it is the largest 32-bit value).
V9_VENDOR_PEN = 0xFFFFFFFF


def load_registry(path: Path | str = REGISTRY_CSV) -> Registry:
    """Read a registry CSV in IANA's column layout (ElementID, Name, Abstract Data Type, ...)."""
    elements = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            eid = row.get("ElementID", "").strip()
            if not eid.isdigit() or not row.get("Name"):
                continue  # IANA lists ranges ("105-127") and reserved rows: not elements
            elements.append(
                InformationElement(
                    int(eid),
                    0,
                    row["Name"].strip(),
                    row.get("Abstract Data Type", "").strip() or "octetArray",
                    row.get("Data Type Semantics", "").strip(),
                    row.get("Units", "").strip(),
                )
            )
    return Registry(elements)


@functools.cache
def default_registry() -> Registry:
    """The registry shipped with celltap plus celltap's enterprise elements (loaded once per process)."""
    from celltap.ipfix.enterprise import celltap_elements, celltap_pen  # it imports InformationElement

    reg = load_registry()
    for ie in celltap_elements(celltap_pen()):
        reg.add(ie)
    return reg
