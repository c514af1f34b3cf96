"""
TLS contexts from files: mutual TLS for the service listener, SNI-selected
front-end certificates for the agent listener ([gateway]), client options
for dialing.

Every problem with a file (missing, unreadable, not PEM, a key that does not
match its certificate) is a L{TLSFilesError} whose text names the file and
the configuration key, for one clear line at start-up.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import OpenSSL
from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from eventsvc.security import TLSFilesError as TLSFilesError  # (where it is raised; defined apart for start-up)


def _read(path: str, key: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSFilesError("{} ({}): cannot read: {}".format(path, key, e.strerror or e))


def load_certificate(path: str, key: str) -> ssl.Certificate:
    """The first certificate in the PEM file at C{path} (configuration key C{key})."""
    return load_certificates(path, key)[0]


_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.*?-----END CERTIFICATE-----", re.DOTALL)


def load_certificates(path: str, key: str) -> List[ssl.Certificate]:
    """
    Every certificate in the PEM file at C{path}, in the file's order.

    As nats-server (Go's C{tls.LoadX509KeyPair}) reads a C{cert_file}: the
    C{CERTIFICATE} blocks, anything else (text, other PEM blocks) between
    them passed over.  A file with none, or with a block that is not a
    certificate, is a L{TLSFilesError} naming the file, the key and which one.
    """
    data = _read(path, key)
    blocks = _PEM_CERTIFICATE.findall(data)
    if not blocks:
        raise TLSFilesError("{} ({}): not a PEM certificate (no BEGIN CERTIFICATE block)".format(path, key))
    found = []
    for number, block in enumerate(blocks, 1):
        try:
            found.append(ssl.Certificate.loadPEM(block))
        except Exception as e:
            raise TLSFilesError("{} ({}): not a PEM certificate (certificate {} of {}: {})".format(
                path, key, number, len(blocks), _why(e)))
    return found


def load_trust(path: str, key: str) -> Any:
    """A trust root of every certificate in the PEM file at C{path} (a bundle of CAs, as nats-server's C{ca_file})."""
    return ssl.trustRootFromCertificates(load_certificates(path, key))


class Identity(ssl.PrivateCertificate):
    """
    A certificate with its private key, and the further certificates of
    its file (C{chain}: an intermediate CA, say) sent after it in every
    handshake, as nats-server sends every certificate of its C{cert_file}.
    """

    chain: List[Any] = []


#: What C{add_extra_chain_cert} (and Twisted's C{extraCertChain}) takes
#: without a warning: cryptography's certificates from pyOpenSSL 24.3 on,
#: pyOpenSSL's own before (PyPy's constraints pin 24.1).
_CHAIN_TAKES_CRYPTOGRAPHY = tuple(int(p) for p in OpenSSL.__version__.split(".")[:2]) >= (24, 3)


def _for_chain(certificate: ssl.Certificate) -> Any:
    return certificate.original.to_cryptography() if _CHAIN_TAKES_CRYPTOGRAPHY else certificate.original


def chain_of(identity: ssl.PrivateCertificate) -> List[Any]:
    """The further certificates to send after C{identity}'s: its file's (L{Identity}), or none."""
    return list(getattr(identity, "chain", ()))


def load_identity(cert_path: str, key_path: str, section: str) -> Identity:
    """
    The first certificate at C{cert_path} with its private key at
    C{key_path}; the file's further certificates (its chain: intermediate
    CAs) are sent after it.  The key must be the first certificate's.
    """
    certificates = load_certificates(cert_path, section + " cert_path")
    key_data = _read(key_path, section + " key_path")
    try:
        key = ssl.KeyPair.load(key_data, crypto.FILETYPE_PEM)
    except Exception as e:
        raise TLSFilesError("{} ({} key_path): not a PEM private key ({})".format(key_path, section, _why(e)))
    try:
        identity = Identity.fromCertificateAndKeyPair(certificates[0], key)
    except Exception:
        raise TLSFilesError(
            "{} ({} key_path) is not the key of {} (cert_path; the key must be its first certificate's)".format(
                key_path, section, cert_path)
        )
    identity.chain = [_for_chain(c) for c in certificates[1:]]
    return identity


def _why(e: Exception) -> str:
    return str(e) or type(e).__name__


def mutual_tls_server(cert_path: str, key_path: str, root_ca_path: str) -> ssl.CertificateOptions:
    """
    Server options that require a client certificate chaining to a CA of
    the file at C{root_ca_path}, TLS 1.2 at least; the certificate sent is
    C{cert_path}'s, with the further certificates of that file (its chain).
    """
    identity = load_identity(cert_path, key_path, "[tls]")
    return _alpn_optional(_chain_built_once(_tls13_suites(ssl.CertificateOptions(
        privateKey=identity.privateKey.original,
        certificate=identity.original,
        extraCertChain=chain_of(identity),
        trustRoot=load_trust(root_ca_path, "[tls] root_ca_path"),
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    ))))


def peer_tls(cert_path: str, key_path: str, root_ca_path: str, alpn: Sequence[bytes] = ()) -> "Tuple[ssl.CertificateOptions, Callable[[str], Any]]":
    """
    Mutual TLS for links to other servers (routes, gateways, leaf nodes,
    gRPC targets) with the [tls] identity and CA.

    @return: the server context, and a function of the name the peer's
        certificate must carry giving client options (offering C{alpn}).
    """
    tls_server = mutual_tls_server(cert_path, key_path, root_ca_path)
    trust = load_trust(root_ca_path, "[tls] root_ca_path")
    identity = load_identity(cert_path, key_path, "[tls]")

    def tls_client(name: str) -> Any:
        return client_options(name, trust, identity, alpn)

    return tls_server, tls_client


def client_options(name: str, trust: Any, identity: ssl.PrivateCertificate, alpn: Sequence[bytes] = ()) -> Any:
    """
    Options for dialing C{name}, trusting C{trust}, presenting C{identity}
    and the further certificates of its file (its chain), offering C{alpn}.
    """
    return ssl.optionsForClientTLS(
        name, trustRoot=trust, clientCertificate=identity, acceptableProtocols=list(alpn) or None,
        extraCertificateOptions={"extraCertChain": chain_of(identity)},
    )


def server_options(identity: ssl.PrivateCertificate, alpn: Sequence[bytes] = ()) -> ssl.CertificateOptions:
    """
    Server options with no client certificate, TLS 1.2 at least.  C{alpn}:
    the protocols chosen over ALPN when the client offers one of them (a
    WebSocket listener's C{http/1.1}, which browsers ask for).
    """
    return _alpn_optional(_chain_built_once(_tls13_suites(ssl.CertificateOptions(
        privateKey=identity.privateKey.original,
        certificate=identity.original,
        extraCertChain=chain_of(identity),
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    ))), alpn)


#: The TLS 1.3 cipher suites a server context chooses from, in its order
#: of preference: Go's crypto/tls order (so nats-server's, and what nats.go
#: asks for first), AES-128-GCM with SHA-256 first.  OpenSSL's default puts
#: AES-256-GCM with SHA-384 first, and a server's preference wins: its key
#: schedule over SHA-384 cost a mutual TLS connection 1.5% more of the
#: server's instructions (twistd under cachegrind) and 1-6% more of its CPU
#: time, for no gain a NATS client asks for.  All three stay on offer.
TLS13_SUITES = b"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"


def _tls13_suites(options: ssl.CertificateOptions) -> ssl.CertificateOptions:
    """C{options}, its context choosing TLS 1.3 suites in L{TLS13_SUITES}'s order."""
    context = options.getContext()
    if hasattr(context, "set_tls13_ciphersuites"):
        context.set_tls13_ciphersuites(TLS13_SUITES)
    else:
        # pyOpenSSL before 24.2 (PyPy's constraints pin 24.1) has no method
        # for it; its binding has the call the method makes.
        from OpenSSL._util import lib

        if lib.SSL_CTX_set_ciphersuites(context._context, TLS13_SUITES) != 1:
            raise ValueError("OpenSSL refused the TLS 1.3 suites {!r}".format(TLS13_SUITES))
    return options


#: OpenSSL's SSL_MODE_NO_AUTO_CHAIN (1.0.2 on), which the binding has no name for.
_NO_AUTO_CHAIN = 0x8


def _chain_built_once(options: ssl.CertificateOptions) -> ssl.CertificateOptions:
    """
    C{options}, its context sending the chain OpenSSL would build for its
    certificate, built once here instead of in every handshake.

    A context given no chain builds one for its own certificate from its
    trust store in every handshake it serves (OpenSSL's auto chain): a
    whole verification, the CA's signature on our certificate checked
    again, an ECDSA verification as costly as the client's own: a sixth
    of a mutual TLS handshake's server CPU, which nats-server (sending the
    certificates of its file) never spends.  The same verification is done
    once here, on the same store, and the chain it finds (the CA, with
    the [tls] files) is the context's extra chain, sent as before, byte
    for byte.  Where our certificate does not verify against the store
    (another CA signed it; a context with no trust store), OpenSSL goes on
    building what it finds, per handshake, as before.  A certificate whose
    file brings its own chain is sent with that chain, and no other.
    """
    context = options.getContext()
    store = context.get_cert_store()
    if store is None or options.certificate is None or options.extraCertChain:
        # (A chain from the certificate's file is sent as it is, as
        # nats-server sends it; OpenSSL builds none when it has one.)
        return options
    try:
        chain = crypto.X509StoreContext(store, options.certificate).get_verified_chain()
    except crypto.X509StoreContextError:
        return options
    for certificate in chain[1:]:
        try:
            context.add_extra_chain_cert(certificate.to_cryptography())
        except TypeError:
            # pyOpenSSL before 24.3 (PyPy's constraints pin 24.1) takes its
            # own X509 only; later ones warn that it is deprecated.
            context.add_extra_chain_cert(certificate)
    context.set_mode(_NO_AUTO_CHAIN)
    return options


def _alpn_optional(options: ssl.CertificateOptions, acceptable: Sequence[bytes] = ()) -> ssl.CertificateOptions:
    """
    ALPN as nats-server (Go's crypto/tls) does it: one of C{acceptable} if
    the client offers it, else the handshake goes on with no protocol.
    Twisted's own callback (installed on every context since 24.x) fails
    the handshake with an internal-error alert when nothing overlaps, so a
    client that offers ALPN (every browser, some NATS clients) could not
    connect at all.  The context is made here, once, and shared by every
    connection, so the callback set on it is the one used.
    """
    wanted = tuple(acceptable)

    def select(connection: SSL.Connection, offered: Sequence[bytes]) -> Any:
        for protocol in wanted:
            if protocol in offered:
                return protocol
        return SSL.NO_OVERLAPPING_PROTOCOLS

    options.getContext().set_alpn_select_callback(select)
    return options


@implementer(IOpenSSLServerConnectionCreator)
class SNIServerContexts:
    """
    Picks the certificate by the name the client asks for (SNI); a client
    that asks for no name, or an unknown one, gets the first (default).
    """

    def __init__(self, entries: Sequence[Tuple[str, ssl.CertificateOptions]]) -> None:
        if not entries:
            raise ValueError("at least one certificate is needed")
        self._default = entries[0][1].getContext()
        self._by_name: Dict[bytes, SSL.Context] = {
            name.lower().encode("idna"): options.getContext() for name, options in entries
        }
        self._default.set_tlsext_servername_callback(self._pick)

    def _pick(self, connection: SSL.Connection) -> None:
        name: Optional[bytes] = connection.get_servername()
        if name:
            context = self._by_name.get(name.lower())
            if context is not None:
                connection.set_context(context)

    def serverConnectionForTLS(self, protocol: object) -> SSL.Connection:
        return SSL.Connection(self._default, None)


@implementer(IPolicyForHTTPS)
class MutualTLSPolicy:
    """
    HTTPS client connections that trust C{ca} (a CA, or the CAs of a
    root_ca_path: L{load_certificates}) and present C{identity} with its chain.
    """

    def __init__(self, ca: "ssl.Certificate | Sequence[ssl.Certificate]", identity: ssl.PrivateCertificate) -> None:
        self._trust = ssl.trustRootFromCertificates([ca] if isinstance(ca, ssl.Certificate) else list(ca))
        self._identity = identity

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return client_options(hostname.decode("idna"), self._trust, self._identity)
