"""stunnel, the TLS terminator at both ends of a node's mutual TLS (Debian's
stunnel4, a maintained proxy: TFF's worker serves insecure gRPC only, and
gRPC's own TLS needs the server to select ALPN h2, which stunnel 5.68 does not
do, so the coordinator's end is stunnel too, in client mode)."""

import os
import shutil
import subprocess
import tempfile

from tff_med import runtime
from tff_med.remote.certs import TlsFiles

def stunnel_binary() -> str:
  """Path of stunnel; FileNotFoundError saying how to install it."""
  path = shutil.which('stunnel4') or shutil.which('stunnel')
  if not path:
    raise FileNotFoundError('stunnel is not installed: `make setup` installs Debian\'s '
                            'stunnel4 (apt-get install stunnel4)')
  return path


def _config(name: str, accept: str, connect: str, tls: TlsFiles, check_host: str,
            client: bool) -> str:
  return '\n'.join([
      'foreground = yes', 'syslog = no', 'debug = 3', *(['client = yes'] if client else []),
      f'[{name}]',
      f'accept = {accept}',
      f'connect = {connect}',
      f'cert = {os.path.abspath(tls.cert)}', f'key = {os.path.abspath(tls.key)}',
      f'CAfile = {os.path.abspath(tls.ca)}',
      'verifyChain = yes', *([] if client else ['requireCert = yes']),
      f'checkHost = {check_host}',
      'sslVersionMin = TLSv1.2', ''])


class Stunnel:
  """One stunnel process (owned: `runtime.start_owned`) accepting on `accept`
  ('HOST:PORT') and forwarding to `connect`, presenting `tls`'s certificate
  and accepting only a peer certificate of the study CA issued to `check_host`.
  `client`: TLS goes out to `connect` (the coordinator's end); otherwise TLS
  comes in on `accept` and the peer must present a certificate (a node's end)."""

  def __init__(self, name: str, accept: str, connect: str, tls: TlsFiles, check_host: str,
               client: bool):
    self._dir = tempfile.mkdtemp(prefix='tff_med_stunnel_')
    config = os.path.join(self._dir, 'stunnel.conf')
    with open(config, 'w') as f:
      f.write(_config(name, accept, connect, tls, check_host, client))
    self.process = runtime.start_owned([stunnel_binary(), config],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
      runtime.wait_for_port(int(accept.rsplit(':', 1)[1]), self.process, f'stunnel ({name})')
    except RuntimeError:
      self.close()
      raise

  def close(self) -> None:
    runtime.stop_owned([self.process])
    shutil.rmtree(self._dir, ignore_errors=True)
