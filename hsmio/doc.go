// Package hsmio is rekey's PKCS#11 plumbing: it opens tokens named by RFC
// 7512 URIs, logs in with a PIN read from a pin-source, and implements
// keys.KEK for AES keys (AES-GCM through C_Encrypt/C_Decrypt, AES-KWP /
// RFC 5649 through C_WrapKey/C_UnwrapKey) and RSA key pairs (RSA-OAEP: the wrap in
// software with the public key, the unwrap by the token through crypto11).
// Importing it registers the "pkcs11" scheme with package keys.
//
// One token (module, token, PIN) is opened once per process and shared by
// every KEK and DoFn instance on it. crypto11 holds the login, finds keys,
// and does RSA-OAEP decryption and HSM random on its session pool; every
// AES key operation (AES-GCM, C_WrapKey, C_UnwrapKey) and the calls
// crypto11 does not offer (attribute reads, C_GetTokenInfo,
// C_GetMechanismList) run on a second, raw pool on the same initialized
// module, which is never finalized. (AES-GCM moved off crypto11's AEAD for
// speed: its per-operation pool wait, context and allocations were a
// tenth of a rewrap's CPU, issue 14.)
//
// Lost sessions (CKR_SESSION_HANDLE_INVALID, CKR_SESSION_CLOSED,
// CKR_DEVICE_REMOVED, CKR_TOKEN_NOT_PRESENT, CKR_USER_NOT_LOGGED_IN) are
// replaced and the operation runs again, at most three times, before its
// (retryable) error goes to the caller. crypto11 puts every session back
// into its pool, dead or alive, so on the crypto11 path the whole crypto11
// Context is replaced (a generation: the Context and the keys found in it,
// found again on first use), logging in again if the token logged the
// application out; the old Context is closed only after the new one exists,
// so crypto11's module reference count never reaches zero. A raw session
// that comes up logged out logs the application in again.
//
// An AES KEK is used through a session copy of it (C_CopyObject with
// CKA_TOKEN false, as sensitive and non-extractable as the key): tokens
// such as SoftHSM2 re-read a token object from their store on every
// operation. The copies live on one raw session held open for them (the
// holder), are used by handle from the raw pool's sessions (crypto11
// checks when the key is opened that another session sees them), and
// vanish with the holder; a lost holder or generation gets a new copy. A
// key with CKA_COPYABLE false, a token that refuses the copy, or one whose
// session limit has no room for the holder uses the token object, and the
// preflight says which (sessioncopy.go).
//
// Pools are sized to what the callers ask for (keys.Options.Sessions,
// KEK.Reserve) and to the token's session limit (C_GetTokenInfo): with a
// limit, one session holds the login, one the session copies (if two are
// left after it), and the rest are split between the raw calls (two
// thirds: every AES operation) and crypto11 (a third, at least one: RSA
// and random);
// KEK.Sessions says how many operations can run at once, and the preflight
// warns when that capped the workers. A token with no session free
// (CKR_SESSION_COUNT) is waited for. Opening a key and its preflight retry
// transient errors with keys.RetryPolicy, as keys.WithRetry does for every
// operation of a run.
//
// The rekey keys command (inventory of a token, moving keys between tokens
// under wrap) lives in the subpackage hsmio/inventory, which logs in
// through OpenRawToken. The fault-injecting module of the tests is
// hsmio/faultpkcs11.
//
// Limits: tokens are selected by label or serial, keys by label (object) or
// id; SoftHSM2 supports RSA-OAEP with SHA-1 only, so rsa-oaep-sha256 unwrap
// needs a real HSM (a token that refuses a wrap's mechanism or parameters
// gets an ErrMechanism naming it and the wraps the token offers); crypto11
// must be the first in the process to initialize a module (a module another
// library initialized first cannot be opened); a token's pools are sized
// when it is first opened if it reports a session limit (Reserve cannot
// grow them past it), and grown by replacing the crypto11 Context if not.
package hsmio
