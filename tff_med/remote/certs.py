"""A study's certificates: a study CA, one server certificate per hospital
node and one client certificate for the coordinator, for mutual TLS.

Issued with the `cryptography` package (no library issues a whole study's set;
this is the small part written here). Private keys are written 0600 and never
leave the folder: give each node its own key, the coordinator its own, and
every party `ca.pem`. The CA key signs nothing after this; keep it offline.

    FOLDER/ca.pem, ca.key
    FOLDER/coordinator.pem, coordinator.key
    FOLDER/HOSPITAL.pem, HOSPITAL.key      (server names: `hosts`)
"""

import dataclasses
import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

COORDINATOR = 'coordinator'
_VALID_DAYS = 365


@dataclasses.dataclass(frozen=True)
class TlsFiles:
  """One party's PEM files: its certificate, its key, and the study CA."""
  cert: str
  key: str
  ca: str

  @classmethod
  def of(cls, folder: str, party: str) -> 'TlsFiles':
    """`party`'s files in a `make_study_certs` folder; FileNotFoundError naming
    the first missing one."""
    files = cls(*(os.path.join(folder, name) for name in
                  (f'{party}.pem', f'{party}.key', 'ca.pem')))
    for path in dataclasses.astuple(files):
      if not os.path.isfile(path):
        raise FileNotFoundError(f'{path}: no such certificate file for {party!r} '
                                '(make one with experiments.make_certs)')
    return files


def _name(common_name: str) -> x509.Name:
  return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, 'tff_med study'),
                    x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key, path: str) -> None:
  with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 'wb') as f:
    f.write(key.private_bytes(serialization.Encoding.PEM,
                              serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def _write(folder: str, party: str, key, cert: x509.Certificate) -> None:
  """PARTY.key (0600) and PARTY.pem in `folder`."""
  _write_key(key, os.path.join(folder, f'{party}.key'))
  with open(os.path.join(folder, f'{party}.pem'), 'wb') as f:
    f.write(cert.public_bytes(serialization.Encoding.PEM))


def _builder(subject: x509.Name, issuer: x509.Name, key) -> x509.CertificateBuilder:
  """A certificate of `key`'s public key, valid from 5 minutes ago for
  _VALID_DAYS, with a random serial."""
  now = datetime.datetime.now(datetime.timezone.utc)
  return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
          .public_key(key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=_VALID_DAYS)))


def _issue(folder, party, ca_key, ca_name, usage, hosts=()) -> None:
  key = ec.generate_private_key(ec.SECP256R1())  # Key material from the OS.
  builder = (_builder(_name(party), ca_name, key)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
  if hosts:
    names = []
    for host in hosts:
      try:
        names.append(x509.IPAddress(ipaddress.ip_address(host)))
      except ValueError:
        names.append(x509.DNSName(host))
    builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
  _write(folder, party, key, builder.sign(ca_key, hashes.SHA256()))


def check_hospital_name(hospital: str) -> None:
  """ValueError unless `hospital` can name a hospital's certificate, files and
  records folder: not empty, '.', '..', 'coordinator' or 'ca', no '/'."""
  if hospital in ('', '.', '..', COORDINATOR, 'ca') or '/' in hospital:
    raise ValueError(f'hospital name {hospital!r}: not "", ".", "..", "{COORDINATOR}" or '
                     '"ca", and no "/"')


def make_study_certs(folder: str, hospitals, hosts=('localhost', '127.0.0.1')) -> None:
  """Writes a new study CA and the coordinator's and each hospital's
  certificate into `folder` (created; refused if it holds a CA already).
  `hosts`: the names and addresses the hospitals' nodes are reached by."""
  os.makedirs(folder, exist_ok=True)
  if os.path.exists(os.path.join(folder, 'ca.pem')):
    raise FileExistsError(f'{folder} holds a study CA already: use it, or another folder')
  for hospital in hospitals:
    check_hospital_name(hospital)
  # Every hospital's certificate names every host: a host that is a party's name
  # would let one hospital's node answer for that party.
  clashes = sorted(set(hosts) & {*hospitals, COORDINATOR, 'ca'})
  if clashes:
    raise ValueError(f'hosts {", ".join(clashes)}: a host may not be a party\'s name (each '
                     'hospital\'s certificate names every host, so it would answer for that '
                     'party)')
  ca_key = ec.generate_private_key(ec.SECP256R1())
  ca_name = _name('tff_med study CA')
  ca = (_builder(ca_name, ca_name, ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256()))
  _write(folder, 'ca', ca_key, ca)
  _issue(folder, COORDINATOR, ca_key, ca_name, ExtendedKeyUsageOID.CLIENT_AUTH)
  for hospital in hospitals:
    _issue(folder, hospital, ca_key, ca_name, ExtendedKeyUsageOID.SERVER_AUTH,
           (hospital, *hosts))  # Its name too: the coordinator checks it.
