"""The introspection XML of org.webinos.KeyStorage1, as shipped for code generators.

``packaging/dbus/org.webinos.KeyStorage1.xml`` contains the interface as the
running service describes it. :func:`interface_document` turns the reply
of ``org.freedesktop.DBus.Introspectable.Introspect`` into that file's
text, so the file and a live service compare as plain strings.
``scripts/update-introspection.py`` writes the file from a live service.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from .dbus_service import INTERFACE

DOCTYPE = (
    '<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"\n'
    ' "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">\n'
)


def interface_document(introspection_xml: str, interface: str = INTERFACE) -> str:
    """Return a node document with only ``interface``, indented by two spaces.

    Raises:
        ValueError: the XML does not describe ``interface``.
    """
    root = ET.fromstring(introspection_xml)
    found = [node for node in root.findall("interface") if node.get("name") == interface]
    if not found:
        raise ValueError(f"the introspection data has no interface {interface}")
    document = ET.Element("node")
    document.append(found[0])
    for element in document.iter():
        element.tail = None
        if element.text is not None and not element.text.strip():
            element.text = None
    ET.indent(document, space="  ")
    return DOCTYPE + ET.tostring(document, encoding="unicode") + "\n"
