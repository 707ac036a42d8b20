"""Transports: how we touch a host (run an argv, read and write its files, forward a port).

``base.py`` holds the :class:`~runners.transports.base.Transport` protocol and the values
it returns; ``local.py`` is this machine; ``ssh.py`` is a remote host over asyncssh, with
its connection pool (``ssh_pool.py``), its one error translation (``ssh_errors.py``), port
forwarding (``forwarding.py``) and the config's hosts by name for ``proxy_jump``
(``ssh_hosts.py``, no asyncssh). ``runners/factories.py`` picks a host's transport. This
file imports nothing, so importing the protocol never loads asyncssh.
"""
