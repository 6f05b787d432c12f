#!/usr/bin/env python3
"""Independent check of nk-handshake.txt (specs/02 §6): a from-scratch Noise NK
(Noise_NK_25519_ChaChaPoly_BLAKE2s) in Python with `cryptography` and hashlib, no snow.
Recomputes message 1, message 2 and the split keys of every hop, then peels the recorded
forward and backward cells. Usage: python3 check_nk.py [nk-handshake.txt]"""
import hashlib, hmac, sys, os
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives import serialization

RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw

def H(d): return hashlib.blake2s(d).digest()
def HMAC(k, d): return hmac.new(k, d, hashlib.blake2s).digest()
def HKDF(ck, ikm):
    t = HMAC(ck, ikm); o1 = HMAC(t, b"\x01"); o2 = HMAC(t, o1 + b"\x02"); return o1, o2
def nonce(n): return b"\x00" * 4 + n.to_bytes(8, "little")
def pub(sk): return X25519PrivateKey.from_private_bytes(sk).public_key().public_bytes(*RAW)
def dh(sk, pk): return X25519PrivateKey.from_private_bytes(sk).exchange(X25519PublicKey.from_public_bytes(pk))

class Sym:
    def __init__(self, prologue):
        name = b"Noise_NK_25519_ChaChaPoly_BLAKE2s"
        self.h = H(name) if len(name) > 32 else name.ljust(32, b"\x00")
        self.ck, self.k, self.n = self.h, None, 0
        self.mix_hash(prologue)
    def mix_hash(self, d): self.h = H(self.h + d)
    def mix_key(self, ikm): self.ck, self.k = HKDF(self.ck, ikm); self.n = 0
    def enc_hash(self, pt):
        ct = ChaCha20Poly1305(self.k).encrypt(nonce(self.n), pt, self.h); self.n += 1
        self.mix_hash(ct); return ct

def handshake(peer_id, rs_sk, e_i, e_r):
    prologue = b"shallot-circuit-v1" + bytes([len(peer_id)]) + peer_id
    rs = pub(rs_sk)
    s = Sym(prologue); s.mix_hash(rs)
    s.mix_hash(pub(e_i)); s.mix_key(dh(e_i, rs)); m1 = pub(e_i) + s.enc_hash(b"")
    s.mix_hash(pub(e_r)); s.mix_key(dh(e_r, pub(e_i))); m2 = pub(e_r) + s.enc_hash(b"")
    fwd, bwd = HKDF(s.ck, b"")
    return m1, m2, fwd, bwd

def parse(path):
    out, sec = {}, None
    for line in open(path):
        line = line.strip()
        if not line or line.startswith("#"): continue
        if line.startswith("["): sec = line[1:-1]; out[sec] = {}; continue
        k, v = line.split(" = "); out[sec][k] = v
    return out

def main():
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "nk-handshake.txt")
    v = parse(path); hx = bytes.fromhex; keys = []
    for h in range(3):
        s = v[f"hop{h}"]
        assert pub(hx(s["relay_onion_secret"])) == hx(s["relay_onion_public"])
        kid = hashlib.sha256(b"shallot-onion-key-id-v1" + hx(s["relay_onion_public"])).digest()[:8]
        assert kid == hx(s["onion_key_id"])
        m1, m2, f, b = handshake(hx(s["relay_peer_id"]), hx(s["relay_onion_secret"]),
                                 hx(s["client_ephemeral_secret"]), hx(s["relay_ephemeral_secret"]))
        assert (m1, m2, f, b) == (hx(s["message1"]), hx(s["message2"]), hx(s["forward_key"]), hx(s["backward_key"])), h
        keys.append((f, b))
    body = hx(v["forward_cell"]["sealed_body"])
    for j, (f, _) in enumerate(keys):  # each hop: marker || inner || tag, nonce counter 0
        pt = ChaCha20Poly1305(f).decrypt(nonce(0), body, b"")
        assert pt[0] == (1 if j == 2 else 2); body = pt[1:]
    assert body == hx(v["forward_cell"]["message"])
    body = hx(v["backward_cell"]["sealed_body"])
    for j, (_, b) in enumerate(keys[:2]):
        pt = ChaCha20Poly1305(b).decrypt(nonce(0), body, b"")
        assert pt[0] == (1 if j == 1 else 2); body = pt[1:]
    assert body == hx(v["backward_cell"]["message"])
    print("nk-handshake.txt: 3 handshakes, forward and backward cells verified independently")

main()
