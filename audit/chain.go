package audit

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	"github.com/gravitational/trace"
	"google.golang.org/protobuf/proto"
)

// canonical is the one encoding the chain is defined over.
var canonical = proto.MarshalOptions{Deterministic: true}

// CanonicalEncoding is the deterministic protobuf encoding of ev with Hash
// and PrevHash cleared (Seq included, so an event cannot be moved).
func CanonicalEncoding(ev *Event) ([]byte, error) {
	if ev == nil {
		return nil, trace.BadParameter("audit event is nil")
	}
	c := Clone(ev)
	c.Hash, c.PrevHash = "", ""
	b, err := canonical.Marshal(c)
	return b, trace.Wrap(err)
}

// ChainHash is hex(SHA-256(canonical || bytes of hex-decoded prevHash)).
// Stores that build the canonical encoding themselves call it directly.
func ChainHash(canonical []byte, prevHash string) (string, error) {
	prev, err := hex.DecodeString(prevHash)
	if err != nil {
		return "", trace.BadParameter("prev_hash %q is not hex", short(prevHash))
	}
	h := sha256.New()
	h.Write(canonical)
	h.Write(prev)
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Hash computes ev's chain hash from its fields and ev.PrevHash.
func Hash(ev *Event) (string, error) {
	b, err := CanonicalEncoding(ev)
	if err != nil {
		return "", trace.Wrap(err)
	}
	return ChainHash(b, ev.PrevHash)
}

// checkpointSigningBytes is the deterministic encoding of cp with the
// signature empty.
func checkpointSigningBytes(cp *Checkpoint) ([]byte, error) {
	c := proto.Clone(cp).(*Checkpoint)
	c.Signature = nil
	b, err := canonical.Marshal(c)
	return b, trace.Wrap(err)
}

// SignCheckpoint sets cp.Signature to the Ed25519 signature of cp.
func SignCheckpoint(cp *Checkpoint, key ed25519.PrivateKey) error {
	if cp == nil {
		return trace.BadParameter("audit checkpoint is nil")
	}
	if len(key) != ed25519.PrivateKeySize {
		return trace.BadParameter("audit checkpoint key is %d bytes, want an Ed25519 private key", len(key))
	}
	b, err := checkpointSigningBytes(cp)
	if err != nil {
		return trace.Wrap(err)
	}
	cp.Signature = ed25519.Sign(key, b)
	return nil
}

// VerifyCheckpoint checks cp's signature against pub.
func VerifyCheckpoint(cp *Checkpoint, pub ed25519.PublicKey) error {
	if cp == nil {
		return trace.BadParameter("audit checkpoint is nil")
	}
	if len(pub) != ed25519.PublicKeySize {
		return trace.BadParameter("audit public key is %d bytes, want %d", len(pub), ed25519.PublicKeySize)
	}
	b, err := checkpointSigningBytes(cp)
	if err != nil {
		return trace.Wrap(err)
	}
	if !ed25519.Verify(pub, b, cp.Signature) {
		return trace.CompareFailed("checkpoint at seq %d: signature does not verify with the audit key", cp.Seq)
	}
	return nil
}

// VerifyResult summarises a chain that verified.
type VerifyResult struct {
	// Events is how many events were checked.
	Events int
	// FirstSeq and LastSeq are the first and last seq checked (0 if none).
	FirstSeq, LastSeq uint64
	// LastHash is the hash the next event must link to.
	LastHash string
	// Checkpoint is the verified start of the chain, nil when it starts at seq 1.
	Checkpoint *Checkpoint
}

// String summarises the result for people.
func (r *VerifyResult) String() string {
	from := "seq 1"
	if r.Checkpoint != nil {
		from = fmt.Sprintf("the signed checkpoint at seq %d", r.Checkpoint.Seq)
	}
	if r.Events == 0 {
		return fmt.Sprintf("no events after %s", from)
	}
	return fmt.Sprintf("%d events, seq %d to %d, from %s; head %s", r.Events, r.FirstSeq, r.LastSeq, from, r.LastHash)
}

// Verifier checks a chain one event at a time, so a caller can verify
// millions of streamed events in constant memory: NewVerifier, then
// Checkpoint if the log was pruned, then Add for each event in seq order,
// then Done. The first failure sticks: later calls return it.
type Verifier struct {
	pub  ed25519.PublicKey
	res  VerifyResult
	next uint64
	prev string
	err  error
}

// NewVerifier starts a chain at seq 1 with an empty prev_hash; pub is the
// audit key that must have signed a checkpoint (nil if none is expected).
func NewVerifier(pub ed25519.PublicKey) (*Verifier, error) {
	if pub != nil && len(pub) != ed25519.PublicKeySize {
		return nil, trace.BadParameter("audit public key is %d bytes, want %d", len(pub), ed25519.PublicKeySize)
	}
	return &Verifier{pub: pub, next: 1}, nil
}

// Checkpoint moves the chain's start to a verified checkpoint: the next
// event must be cp.Seq+1 and link to cp.Hash. Only before the first Add.
func (v *Verifier) Checkpoint(cp *Checkpoint) error {
	if v.err != nil {
		return v.err
	}
	switch {
	case v.res.Events > 0 || v.res.Checkpoint != nil:
		v.err = trace.BadParameter("audit checkpoint must come before every event, and only once")
	case v.pub == nil:
		v.err = trace.BadParameter("the audit log starts at a checkpoint (seq %d) but no audit public key was given to verify it", cp.GetSeq())
	default:
		v.err = VerifyCheckpoint(cp, v.pub)
	}
	if v.err != nil {
		return v.err
	}
	v.next, v.prev = cp.Seq+1, cp.Hash
	v.res.Checkpoint = cp
	v.res.LastSeq, v.res.LastHash = cp.Seq, cp.Hash
	return nil
}

// Add checks the next event in seq order.
func (v *Verifier) Add(ev *Event) error {
	if v.err != nil {
		return v.err
	}
	v.err = v.check(ev)
	return v.err
}

func (v *Verifier) check(ev *Event) error {
	if ev == nil {
		return trace.BadParameter("event %d: missing (nil event)", v.next)
	}
	switch {
	case ev.Seq < v.next:
		return trace.CompareFailed("event %d: out of order or duplicate (expected seq %d)", ev.Seq, v.next)
	case ev.Seq > v.next:
		return trace.CompareFailed("event %d: missing (next event present is seq %d)", v.next, ev.Seq)
	}
	if ev.PrevHash != v.prev {
		return trace.CompareFailed("event %d: prev_hash %s does not link to the previous hash %s", ev.Seq, short(ev.PrevHash), short(v.prev))
	}
	computed, err := Hash(ev)
	if err != nil {
		return trace.CompareFailed("event %d: %v", ev.Seq, err)
	}
	if computed != ev.Hash {
		return trace.CompareFailed("event %d: hash mismatch (stored %s, computed %s)", ev.Seq, short(ev.Hash), short(computed))
	}
	if v.res.Events == 0 {
		v.res.FirstSeq = ev.Seq
	}
	v.res.Events++
	v.res.LastSeq, v.res.LastHash = ev.Seq, ev.Hash
	v.next, v.prev = ev.Seq+1, ev.Hash
	return nil
}

// Done returns the summary, or the first failure.
func (v *Verifier) Done() (*VerifyResult, error) {
	if v.err != nil {
		return nil, v.err
	}
	res := v.res
	return &res, nil
}

// Verify checks events (in seq order) as a chain starting at cp, or at seq 1
// when cp is nil; see Verifier.
func Verify(events []*Event, cp *Checkpoint, pub ed25519.PublicKey) (*VerifyResult, error) {
	v, err := NewVerifier(pub)
	if err != nil {
		return nil, trace.Wrap(err)
	}
	if cp != nil {
		if err := v.Checkpoint(cp); err != nil {
			return nil, trace.Wrap(err)
		}
	}
	for _, ev := range events {
		if err := v.Add(ev); err != nil {
			return nil, trace.Wrap(err)
		}
	}
	return v.Done()
}

// short keeps hashes in messages readable and attacker-controlled strings bounded.
func short(s string) string {
	const max = 16
	if len(s) <= max {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprintf("%q…", s[:max])
}
