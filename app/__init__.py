"""The composition root: builds one RelayDesk process from its parts.

It sits above every other package (bot/, escalation/, api/, console/,
reports/) and wires them together; nothing imports it but the command line,
the benches and the tests.
"""
