/*
 * faultpkcs11: a PKCS#11 module that forwards to a real one (SoftHSM2 by
 * default) and disturbs chosen calls the way a faulty or overloaded HSM
 * does: it makes them fail, return wrong data without an error, lose their
 * session, or take longer; and it can cap the number of open sessions. Test
 * tooling for rekey: it must never be given to a production job.
 *
 * It exports one symbol, C_GetFunctionList, which returns a copy of the real
 * module's function list with the entries that take a session, and a few
 * others, replaced by wrappers.
 *
 * Configuration, read once per loaded instance (at the first
 * C_GetFunctionList or C_Initialize), from the environment; a file named
 * "<path of this library>.env" with KEY=VALUE lines, if present, overrides
 * the environment (so two copies of the library in one process can be
 * configured differently):
 *
 *   REKEY_FAULT_MODULE  real module (default /usr/lib/softhsm/libsofthsm2.so)
 *   REKEY_FAULT_CALLS   comma list of calls to disturb (names in CALLS below:
 *                       C_OpenSession, C_Login, C_Encrypt, C_GetTokenInfo, ...;
 *                       empty: disturb nothing)
 *   REKEY_FAULT_MODE    fail (default): the call returns REKEY_FAULT_CODE
 *                       without doing anything visible;
 *                       corrupt: the call runs, and when it succeeded with
 *                       output one bit of the output is flipped;
 *                       drop: the call returns REKEY_FAULT_CODE and the HSM
 *                       forgets its session: every later call on that handle
 *                       returns CKR_SESSION_HANDLE_INVALID, and it no longer
 *                       counts as open (REKEY_FAULT_DROP=all: every session
 *                       of this instance is forgotten, a fail-over);
 *                       delay: the call sleeps REKEY_FAULT_DELAY_MS, then runs;
 *                       trace: the call runs untouched and is logged (the
 *                       way to learn which calls a piece of code makes)
 *   REKEY_FAULT_RATE    share of eligible calls disturbed, 0..1 (default 1)
 *   REKEY_FAULT_CODE    the return value of fail and drop: a CKR_ name below or
 *                       a number (default CKR_DEVICE_ERROR for fail,
 *                       CKR_SESSION_HANDLE_INVALID for drop)
 *   REKEY_FAULT_DROP    session (default) or all, for drop mode
 *   REKEY_FAULT_DELAY_MS  delay mode's sleep in milliseconds (default 100)
 *   REKEY_FAULT_SEED    which calls are chosen is a function of the seed and
 *                       the call's index only (default 1)
 *   REKEY_FAULT_AFTER   the first N eligible calls are never disturbed
 *   REKEY_FAULT_EVERY   N > 0: disturb every Nth eligible call after those
 *                       (the Nth, the 2Nth, ...) instead of a random share
 *   REKEY_FAULT_MAX     at most N calls are disturbed (0: no limit)
 *   REKEY_FAULT_LOG     file to append one line per disturbed call to
 *                       ("<call> <mode> <index>"; never any data), and one
 *                       per session refused for REKEY_FAULT_MAX_SESSIONS
 *                       ("C_OpenSession session-count <index>")
 *   REKEY_FAULT_MAX_SESSIONS  N > 0: at most N sessions opened through this
 *                       instance are open at once; C_OpenSession past that
 *                       returns CKR_SESSION_COUNT, and C_GetTokenInfo reports
 *                       N as ulMaxSessionCount and ulMaxRwSessionCount and
 *                       the open ones as ulSessionCount and ulRwSessionCount.
 *                       Independent of the mode and the calls.
 *
 * Eligible calls: in fail, drop, delay and trace mode every call of the
 * chosen functions; in corrupt mode the calls that return data into a caller
 * buffer (C_Decrypt, C_Encrypt, C_WrapKey, C_GenerateRandom,
 * C_GetAttributeValue with a value buffer) and C_UnwrapKey. A corrupted
 * C_UnwrapKey creates the right object, and the next C_GetAttributeValue that
 * reads its CKA_VALUE gets one bit flipped: to the caller, the unwrap
 * returned a wrong key. Other functions are left alone in corrupt mode.
 *
 * A failed C_Encrypt/C_Decrypt ends the real operation first (it is run into
 * a scratch buffer that is wiped), so the session stays usable, as it would
 * after a real error. A dropped session stays open in the real module until
 * its holder calls C_CloseSession on it (which returns
 * CKR_SESSION_HANDLE_INVALID, as an HSM that lost the session does): its
 * handle cannot be reused by the real module before that, so a caller that
 * keeps a dropped handle keeps failing, as it would on a real HSM. Login
 * state is the real module's: a drop does not log the token out.
 *
 * The real module is shared with every other user in the process: if it is
 * initialized already, C_Initialize succeeds here, and C_Finalize finalizes
 * it only if this instance initialized it.
 */
#define CK_PTR *
#define CK_DEFINE_FUNCTION(returnType, name) returnType name
#define CK_DECLARE_FUNCTION(returnType, name) returnType name
#define CK_DECLARE_FUNCTION_POINTER(returnType, name) returnType(*name)
#define CK_CALLBACK_FUNCTION(returnType, name) returnType(*name)
#ifndef NULL_PTR
#define NULL_PTR 0
#endif

#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "pkcs11.h"

#define EXPORT __attribute__((visibility("default")))

/* The calls that can be disturbed: every function that takes a session
 * but C_CloseSession, and the token queries. X(enum suffix, name); the Go
 * package lists the same names (Calls). */
#define CALLS(X)                                                                                                       \
	X(GETSLOTLIST, "C_GetSlotList")                                                                                \
	X(GETTOKENINFO, "C_GetTokenInfo")                                                                              \
	X(GETMECHANISMLIST, "C_GetMechanismList")                                                                      \
	X(GETMECHANISMINFO, "C_GetMechanismInfo")                                                                      \
	X(OPENSESSION, "C_OpenSession")                                                                                \
	X(GETSESSIONINFO, "C_GetSessionInfo")                                                                          \
	X(LOGIN, "C_Login")                                                                                            \
	X(LOGOUT, "C_Logout")                                                                                          \
	X(CREATEOBJECT, "C_CreateObject")                                                                              \
	X(COPYOBJECT, "C_CopyObject")                                                                                  \
	X(DESTROYOBJECT, "C_DestroyObject")                                                                            \
	X(GETOBJECTSIZE, "C_GetObjectSize")                                                                            \
	X(GETATTRIBUTEVALUE, "C_GetAttributeValue")                                                                    \
	X(SETATTRIBUTEVALUE, "C_SetAttributeValue")                                                                    \
	X(FINDOBJECTSINIT, "C_FindObjectsInit")                                                                        \
	X(FINDOBJECTS, "C_FindObjects")                                                                                \
	X(FINDOBJECTSFINAL, "C_FindObjectsFinal")                                                                      \
	X(ENCRYPTINIT, "C_EncryptInit")                                                                                \
	X(ENCRYPT, "C_Encrypt")                                                                                        \
	X(ENCRYPTUPDATE, "C_EncryptUpdate")                                                                            \
	X(ENCRYPTFINAL, "C_EncryptFinal")                                                                              \
	X(DECRYPTINIT, "C_DecryptInit")                                                                                \
	X(DECRYPT, "C_Decrypt")                                                                                        \
	X(DECRYPTUPDATE, "C_DecryptUpdate")                                                                            \
	X(DECRYPTFINAL, "C_DecryptFinal")                                                                              \
	X(DIGESTINIT, "C_DigestInit")                                                                                  \
	X(DIGEST, "C_Digest")                                                                                          \
	X(DIGESTUPDATE, "C_DigestUpdate")                                                                              \
	X(DIGESTKEY, "C_DigestKey")                                                                                    \
	X(DIGESTFINAL, "C_DigestFinal")                                                                                \
	X(SIGNINIT, "C_SignInit")                                                                                      \
	X(SIGN, "C_Sign")                                                                                              \
	X(SIGNUPDATE, "C_SignUpdate")                                                                                  \
	X(SIGNFINAL, "C_SignFinal")                                                                                    \
	X(VERIFYINIT, "C_VerifyInit")                                                                                  \
	X(VERIFY, "C_Verify")                                                                                          \
	X(VERIFYUPDATE, "C_VerifyUpdate")                                                                              \
	X(VERIFYFINAL, "C_VerifyFinal")                                                                                \
	X(GENERATEKEY, "C_GenerateKey")                                                                                \
	X(GENERATEKEYPAIR, "C_GenerateKeyPair")                                                                        \
	X(WRAPKEY, "C_WrapKey")                                                                                        \
	X(UNWRAPKEY, "C_UnwrapKey")                                                                                    \
	X(DERIVEKEY, "C_DeriveKey")                                                                                    \
	X(SEEDRANDOM, "C_SeedRandom")                                                                                  \
	X(GENERATERANDOM, "C_GenerateRandom")                                                                          \
	X(GETOPERATIONSTATE, "C_GetOperationState")                                                                    \
	X(SETOPERATIONSTATE, "C_SetOperationState")                                                                    \
	X(INITPIN, "C_InitPIN")                                                                                        \
	X(SETPIN, "C_SetPIN")                                                                                          \
	X(SIGNRECOVERINIT, "C_SignRecoverInit")                                                                        \
	X(SIGNRECOVER, "C_SignRecover")                                                                                \
	X(VERIFYRECOVERINIT, "C_VerifyRecoverInit")                                                                    \
	X(VERIFYRECOVER, "C_VerifyRecover")                                                                            \
	X(DIGESTENCRYPTUPDATE, "C_DigestEncryptUpdate")                                                                \
	X(DECRYPTDIGESTUPDATE, "C_DecryptDigestUpdate")                                                                \
	X(SIGNENCRYPTUPDATE, "C_SignEncryptUpdate")                                                                    \
	X(DECRYPTVERIFYUPDATE, "C_DecryptVerifyUpdate")                                                                \
	X(GETFUNCTIONSTATUS, "C_GetFunctionStatus")                                                                    \
	X(CANCELFUNCTION, "C_CancelFunction")

#define X_ENUM(e, n) F_##e,
#define X_NAME(e, n) n,
enum { CALLS(X_ENUM) F_COUNT };
static const char *const fnames[F_COUNT] = {CALLS(X_NAME)};

enum { M_FAIL, M_CORRUPT, M_DROP, M_DELAY, M_TRACE };
static const char *const mnames[] = {"fail", "corrupt", "drop", "delay", "trace"};

static const struct {
	const char *name;
	CK_RV rv;
} codes[] = {
	{"CKR_DEVICE_ERROR", CKR_DEVICE_ERROR},
	{"CKR_DEVICE_MEMORY", CKR_DEVICE_MEMORY},
	{"CKR_DEVICE_REMOVED", CKR_DEVICE_REMOVED},
	{"CKR_FUNCTION_FAILED", CKR_FUNCTION_FAILED},
	{"CKR_GENERAL_ERROR", CKR_GENERAL_ERROR},
	{"CKR_HOST_MEMORY", CKR_HOST_MEMORY},
	{"CKR_SESSION_HANDLE_INVALID", CKR_SESSION_HANDLE_INVALID},
	{"CKR_SESSION_CLOSED", CKR_SESSION_CLOSED},
	{"CKR_SESSION_COUNT", CKR_SESSION_COUNT},
	{"CKR_TOKEN_NOT_PRESENT", CKR_TOKEN_NOT_PRESENT},
	{"CKR_OPERATION_ACTIVE", CKR_OPERATION_ACTIVE},
	{"CKR_KEY_HANDLE_INVALID", CKR_KEY_HANDLE_INVALID},
	{"CKR_MECHANISM_INVALID", CKR_MECHANISM_INVALID},
	{"CKR_ARGUMENTS_BAD", CKR_ARGUMENTS_BAD},
	{"CKR_PIN_INCORRECT", CKR_PIN_INCORRECT},
	{"CKR_ENCRYPTED_DATA_INVALID", CKR_ENCRYPTED_DATA_INVALID},
	{"CKR_WRAPPED_KEY_INVALID", CKR_WRAPPED_KEY_INVALID},
};

static struct {
	char module[4096];
	int enabled[F_COUNT];
	int mode;
	int drop_all;
	double rate;
	CK_RV code;
	int code_set;
	uint64_t seed, after, every, max, delay_ms, max_sessions;
	int logfd;
	char err[8704]; /* configuration or load error, reported by C_Initialize */
	CK_RV errcode;
} cfg;

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static void *real_handle;
static CK_FUNCTION_LIST_PTR real;
static CK_FUNCTION_LIST list;
static pthread_mutex_t init_mu = PTHREAD_MUTEX_INITIALIZER;
static int initialized, owns_real;
static atomic_uint_fast64_t eligible, injected, refused;

/* Objects made by corrupted C_UnwrapKey calls whose value is yet to be read. */
#define MAX_TAINTED 256
static pthread_mutex_t taint_mu = PTHREAD_MUTEX_INITIALIZER;
static CK_OBJECT_HANDLE tainted[MAX_TAINTED];
static int ntainted;

/* Sessions opened through this instance: live, or dropped (the HSM forgot
 * them; the real session stays open until its holder closes it, so that
 * its handle is not handed out again meanwhile). */
struct sess {
	CK_SESSION_HANDLE h;
	CK_SLOT_ID slot;
	int dead;
};
static pthread_mutex_t sess_mu = PTHREAD_MUTEX_INITIALIZER;
static struct sess *sessions;
static size_t nsess, capsess;
static atomic_size_t ndead; /* fast path: no lock while nothing was dropped */

/* ---- configuration ---- */

static char sidecar[8192]; /* "<library>.env" contents, lines KEY=VALUE */

static void read_sidecar(void)
{
	Dl_info info;
	if (!dladdr((void *)&C_GetFunctionList, &info) || info.dli_fname == NULL)
		return;
	char path[4200];
	if (snprintf(path, sizeof path, "%s.env", info.dli_fname) >= (int)sizeof path)
		return;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	ssize_t n = read(fd, sidecar, sizeof sidecar - 1);
	close(fd);
	sidecar[n > 0 ? n : 0] = 0;
}

/* setting returns the value of key: the sidecar's line, else the
 * environment's, else NULL. The result is copied into buf. */
static const char *setting(const char *key, char *buf, size_t len)
{
	size_t kl = strlen(key);
	for (const char *p = sidecar; *p;) {
		const char *end = strchr(p, '\n');
		size_t ll = end ? (size_t)(end - p) : strlen(p);
		if (ll > kl && strncmp(p, key, kl) == 0 && p[kl] == '=') {
			size_t vl = ll - kl - 1;
			if (vl >= len)
				vl = len - 1;
			memcpy(buf, p + kl + 1, vl);
			buf[vl] = 0;
			if (vl > 0 && buf[vl - 1] == '\r')
				buf[vl - 1] = 0;
			return buf;
		}
		p += ll + (end ? 1 : 0);
	}
	const char *v = getenv(key);
	if (v == NULL)
		return NULL;
	snprintf(buf, len, "%s", v);
	return buf;
}

static int parse_u64(const char *s, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 0);
	if (errno || end == s || *end || s[0] == '-')
		return -1;
	*out = v;
	return 0;
}

static void configure(void)
{
	char buf[4096];
	read_sidecar();
	cfg.logfd = -1;
	cfg.rate = 1;
	cfg.code = CKR_DEVICE_ERROR;
	cfg.seed = 1;
	cfg.delay_ms = 100;
	snprintf(cfg.module, sizeof cfg.module, "%s",
		 setting("REKEY_FAULT_MODULE", buf, sizeof buf) ? buf : "/usr/lib/softhsm/libsofthsm2.so");
	if (setting("REKEY_FAULT_CALLS", buf, sizeof buf)) {
		char *save = NULL;
		for (char *tok = strtok_r(buf, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)) {
			int found = 0;
			for (int i = 0; i < F_COUNT; i++) {
				if (strcmp(tok, fnames[i]) == 0) {
					cfg.enabled[i] = found = 1;
				}
			}
			if (!found) {
				snprintf(cfg.err, sizeof cfg.err, "REKEY_FAULT_CALLS: unknown call %s (known: the C_ functions that take a session, C_GetSlotList, C_GetTokenInfo, C_GetMechanismList, C_GetMechanismInfo)", tok);
				return;
			}
		}
	}
	if (setting("REKEY_FAULT_MODE", buf, sizeof buf) && buf[0]) {
		int found = 0;
		for (int i = 0; i < (int)(sizeof mnames / sizeof mnames[0]); i++) {
			if (strcmp(buf, mnames[i]) == 0) {
				cfg.mode = i;
				found = 1;
			}
		}
		if (!found) {
			snprintf(cfg.err, sizeof cfg.err, "REKEY_FAULT_MODE: %s is not fail, corrupt, drop, delay or trace", buf);
			return;
		}
	}
	if (cfg.mode == M_DROP)
		cfg.code = CKR_SESSION_HANDLE_INVALID;
	if (setting("REKEY_FAULT_DROP", buf, sizeof buf) && buf[0]) {
		if (strcmp(buf, "all") == 0)
			cfg.drop_all = 1;
		else if (strcmp(buf, "session") != 0) {
			snprintf(cfg.err, sizeof cfg.err, "REKEY_FAULT_DROP: %s is not session or all", buf);
			return;
		}
	}
	if (setting("REKEY_FAULT_RATE", buf, sizeof buf) && buf[0]) {
		char *end;
		double r = strtod(buf, &end);
		if (end == buf || *end || !(r >= 0 && r <= 1)) {
			snprintf(cfg.err, sizeof cfg.err, "REKEY_FAULT_RATE: %s is not a share between 0 and 1", buf);
			return;
		}
		cfg.rate = r;
	}
	if (setting("REKEY_FAULT_CODE", buf, sizeof buf) && buf[0]) {
		uint64_t v;
		int found = 0;
		for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
			if (strcmp(buf, codes[i].name) == 0) {
				cfg.code = codes[i].rv;
				found = 1;
			}
		}
		if (!found) {
			if (parse_u64(buf, &v) != 0 || v == CKR_OK) {
				snprintf(cfg.err, sizeof cfg.err, "REKEY_FAULT_CODE: %s is not a CKR_ name this module knows nor a non-zero number", buf);
				return;
			}
			cfg.code = (CK_RV)v;
		}
	}
	struct {
		const char *key;
		uint64_t *dst;
	} nums[] = {{"REKEY_FAULT_SEED", &cfg.seed},
		    {"REKEY_FAULT_AFTER", &cfg.after},
		    {"REKEY_FAULT_EVERY", &cfg.every},
		    {"REKEY_FAULT_MAX", &cfg.max},
		    {"REKEY_FAULT_DELAY_MS", &cfg.delay_ms},
		    {"REKEY_FAULT_MAX_SESSIONS", &cfg.max_sessions}};
	for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
		if (setting(nums[i].key, buf, sizeof buf) && buf[0] && parse_u64(buf, nums[i].dst) != 0) {
			snprintf(cfg.err, sizeof cfg.err, "%s: %s is not a non-negative integer", nums[i].key, buf);
			return;
		}
	}
	if (setting("REKEY_FAULT_LOG", buf, sizeof buf) && buf[0]) {
		cfg.logfd = open(buf, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
		if (cfg.logfd < 0) {
			snprintf(cfg.err, sizeof cfg.err, "REKEY_FAULT_LOG: cannot open %s: %s", buf, strerror(errno));
			return;
		}
	}
}

/* A bad setting fails C_Initialize with CKR_ARGUMENTS_BAD. */
static void configure_checked(void)
{
	configure();
	if (cfg.err[0])
		cfg.errcode = CKR_ARGUMENTS_BAD;
}

/* ---- choosing the calls ---- */

static uint64_t splitmix64(uint64_t x)
{
	x += 0x9E3779B97F4A7C15ull;
	x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
	x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
	return x ^ (x >> 31);
}

static void logline(const char *call, const char *what, uint64_t n)
{
	if (cfg.logfd < 0)
		return;
	char line[96];
	int l = snprintf(line, sizeof line, "%s %s %llu\n", call, what, (unsigned long long)n);
	if (l > 0)
		(void)!write(cfg.logfd, line, (size_t)l);
}

/* decide counts one eligible call of function f and reports whether to
 * disturb it; *hash gets bits for choosing what to flip. */
static int decide(int f, uint64_t *hash)
{
	if (!cfg.enabled[f])
		return 0;
	uint64_t n = atomic_fetch_add(&eligible, 1);
	if (n < cfg.after)
		return 0;
	uint64_t h = splitmix64(cfg.seed ^ splitmix64(n));
	if (cfg.every) {
		if ((n - cfg.after) % cfg.every != cfg.every - 1)
			return 0;
	} else if (cfg.rate < 1) {
		/* h's top 53 bits as a uniform share in [0,1) */
		if ((double)(h >> 11) / 9007199254740992.0 >= cfg.rate)
			return 0;
	}
	if (cfg.max) {
		uint64_t k = atomic_fetch_add(&injected, 1);
		if (k >= cfg.max)
			return 0;
	} else {
		atomic_fetch_add(&injected, 1);
	}
	if (hash)
		*hash = splitmix64(h);
	logline(fnames[f], mnames[cfg.mode], n);
	return 1;
}

static void flip(CK_BYTE_PTR p, CK_ULONG len, uint64_t h)
{
	if (p && len)
		p[(h >> 8) % len] ^= (CK_BYTE)(1u << (h & 7));
}

/* ---- sessions ---- */

/* find returns the index of live-or-dead session h, or -1. sess_mu held. */
static long find_sess(CK_SESSION_HANDLE h)
{
	for (size_t i = 0; i < nsess; i++)
		if (sessions[i].h == h)
			return (long)i;
	return -1;
}

static size_t nlive(void)
{
	size_t n = 0;
	for (size_t i = 0; i < nsess; i++)
		n += !sessions[i].dead;
	return n;
}

static void forget_sess(long i)
{
	if (sessions[i].dead)
		atomic_fetch_sub(&ndead, 1);
	sessions[i] = sessions[--nsess];
}

static int is_dead(CK_SESSION_HANDLE h)
{
	if (atomic_load(&ndead) == 0)
		return 0;
	pthread_mutex_lock(&sess_mu);
	long i = find_sess(h);
	int dead = i >= 0 && sessions[i].dead;
	pthread_mutex_unlock(&sess_mu);
	return dead;
}

/* drop makes the HSM forget session h (or, with REKEY_FAULT_DROP=all, every
 * session of this instance). */
static void drop(int has_s, CK_SESSION_HANDLE h)
{
	pthread_mutex_lock(&sess_mu);
	for (size_t i = 0; i < nsess; i++) {
		if (!sessions[i].dead && (cfg.drop_all || (has_s && sessions[i].h == h))) {
			sessions[i].dead = 1;
			atomic_fetch_add(&ndead, 1);
		}
	}
	pthread_mutex_unlock(&sess_mu);
}

static void nap(void)
{
	struct timespec ts = {(time_t)(cfg.delay_ms / 1000), (long)(cfg.delay_ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
	}
}

/* gate runs before a call of f (on session s when has_s). It returns 0 when
 * the call goes on to the real module, 1 when s was dropped earlier and 2
 * when the call is failed or dropped now; *rv is then the call's result. */
enum { GO, DEAD, STOPPED };
static int gate(int f, int has_s, CK_SESSION_HANDLE s, CK_RV *rv)
{
	if (has_s && is_dead(s)) {
		*rv = CKR_SESSION_HANDLE_INVALID;
		return DEAD;
	}
	if (cfg.mode == M_CORRUPT || !decide(f, NULL))
		return GO;
	switch (cfg.mode) {
	case M_DELAY:
		nap();
		return GO;
	case M_TRACE:
		return GO;
	case M_DROP:
		drop(has_s, s);
		*rv = cfg.code;
		return STOPPED;
	default:
		*rv = cfg.code;
		return STOPPED;
	}
}

#define GATE(f, s)                                                                                                     \
	do {                                                                                                           \
		CK_RV gate_rv;                                                                                         \
		if (gate((f), 1, (s), &gate_rv) != GO)                                                                 \
			return gate_rv;                                                                                \
	} while (0)

/* ---- wrappers ---- */

static CK_RV w_Initialize(CK_VOID_PTR args)
{
	if (cfg.err[0]) {
		fprintf(stderr, "faultpkcs11: %s\n", cfg.err);
		return cfg.errcode;
	}
	pthread_mutex_lock(&init_mu);
	CK_RV rv;
	if (initialized) {
		rv = CKR_CRYPTOKI_ALREADY_INITIALIZED;
	} else {
		rv = real->C_Initialize(args);
		if (rv == CKR_OK) {
			owns_real = 1;
		} else if (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED) {
			/* Another user of the real module in this process. */
			owns_real = 0;
			rv = CKR_OK;
		}
		if (rv == CKR_OK)
			initialized = 1;
	}
	pthread_mutex_unlock(&init_mu);
	return rv;
}

static CK_RV w_Finalize(CK_VOID_PTR reserved)
{
	pthread_mutex_lock(&init_mu);
	CK_RV rv = CKR_OK;
	if (!initialized) {
		rv = CKR_CRYPTOKI_NOT_INITIALIZED;
	} else {
		if (owns_real)
			rv = real->C_Finalize(reserved);
		initialized = owns_real = 0;
	}
	pthread_mutex_unlock(&init_mu);
	return rv;
}

static CK_RV w_GetSlotList(CK_BBOOL present, CK_SLOT_ID_PTR p, CK_ULONG_PTR n)
{
	CK_RV rv;
	if (gate(F_GETSLOTLIST, 0, 0, &rv) != GO)
		return rv;
	return real->C_GetSlotList(present, p, n);
}

static CK_RV w_GetTokenInfo(CK_SLOT_ID slot, CK_TOKEN_INFO_PTR info)
{
	CK_RV rv;
	if (gate(F_GETTOKENINFO, 0, 0, &rv) != GO)
		return rv;
	rv = real->C_GetTokenInfo(slot, info);
	if (rv == CKR_OK && info != NULL && cfg.max_sessions) {
		pthread_mutex_lock(&sess_mu);
		size_t n = nlive();
		pthread_mutex_unlock(&sess_mu);
		info->ulMaxSessionCount = info->ulMaxRwSessionCount = (CK_ULONG)cfg.max_sessions;
		info->ulSessionCount = info->ulRwSessionCount = (CK_ULONG)n;
	}
	return rv;
}

static CK_RV w_GetMechanismList(CK_SLOT_ID slot, CK_MECHANISM_TYPE_PTR p, CK_ULONG_PTR n)
{
	CK_RV rv;
	if (gate(F_GETMECHANISMLIST, 0, 0, &rv) != GO)
		return rv;
	return real->C_GetMechanismList(slot, p, n);
}

static CK_RV w_GetMechanismInfo(CK_SLOT_ID slot, CK_MECHANISM_TYPE m, CK_MECHANISM_INFO_PTR info)
{
	CK_RV rv;
	if (gate(F_GETMECHANISMINFO, 0, 0, &rv) != GO)
		return rv;
	return real->C_GetMechanismInfo(slot, m, info);
}

static CK_RV w_OpenSession(CK_SLOT_ID slot, CK_FLAGS flags, CK_VOID_PTR app, CK_NOTIFY notify, CK_SESSION_HANDLE_PTR ph)
{
	CK_RV rv;
	if (gate(F_OPENSESSION, 0, 0, &rv) != GO)
		return rv;
	pthread_mutex_lock(&sess_mu);
	if (cfg.max_sessions && nlive() >= cfg.max_sessions) {
		pthread_mutex_unlock(&sess_mu);
		logline("C_OpenSession", "session-count", atomic_fetch_add(&refused, 1));
		return CKR_SESSION_COUNT;
	}
	rv = real->C_OpenSession(slot, flags, app, notify, ph);
	if (rv == CKR_OK && ph != NULL) {
		if (nsess == capsess) {
			size_t c = capsess ? 2 * capsess : 64;
			struct sess *grown = realloc(sessions, c * sizeof *grown);
			if (grown == NULL) {
				(void)real->C_CloseSession(*ph);
				pthread_mutex_unlock(&sess_mu);
				return CKR_HOST_MEMORY;
			}
			sessions = grown;
			capsess = c;
		}
		sessions[nsess++] = (struct sess){*ph, slot, 0};
	}
	pthread_mutex_unlock(&sess_mu);
	return rv;
}

static CK_RV w_CloseSession(CK_SESSION_HANDLE s)
{
	pthread_mutex_lock(&sess_mu);
	long i = find_sess(s);
	int dead = i >= 0 && sessions[i].dead;
	CK_RV rv = real->C_CloseSession(s);
	if (i >= 0 && (dead || rv == CKR_OK))
		forget_sess(i);
	pthread_mutex_unlock(&sess_mu);
	/* The HSM lost a dropped session long ago. */
	return dead ? CKR_SESSION_HANDLE_INVALID : rv;
}

static CK_RV w_CloseAllSessions(CK_SLOT_ID slot)
{
	pthread_mutex_lock(&sess_mu);
	CK_RV rv = real->C_CloseAllSessions(slot);
	if (rv == CKR_OK) {
		for (size_t i = 0; i < nsess;) {
			if (sessions[i].slot == slot)
				forget_sess((long)i);
			else
				i++;
		}
	}
	pthread_mutex_unlock(&sess_mu);
	return rv;
}

static int untaint(CK_OBJECT_HANDLE h)
{
	int found = 0;
	pthread_mutex_lock(&taint_mu);
	for (int i = 0; i < ntainted; i++) {
		if (tainted[i] == h) {
			tainted[i] = tainted[--ntainted];
			found = 1;
			break;
		}
	}
	pthread_mutex_unlock(&taint_mu);
	return found;
}

static CK_RV w_GetAttributeValue(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n)
{
	GATE(F_GETATTRIBUTEVALUE, s);
	CK_RV rv = real->C_GetAttributeValue(s, o, t, n);
	if (rv != CKR_OK)
		return rv;
	int has_value = 0;
	CK_ULONG vi = 0;
	for (CK_ULONG i = 0; i < n; i++) {
		if (t[i].type == CKA_VALUE && t[i].pValue != NULL && t[i].ulValueLen != CK_UNAVAILABLE_INFORMATION &&
		    t[i].ulValueLen > 0) {
			has_value = 1;
			vi = i;
		}
	}
	if (!has_value)
		return rv;
	if (untaint(o)) {
		/* The value of a key a corrupted C_UnwrapKey made. */
		flip(t[vi].pValue, t[vi].ulValueLen, splitmix64(o ^ cfg.seed));
		return rv;
	}
	uint64_t h;
	if (cfg.mode == M_CORRUPT && decide(F_GETATTRIBUTEVALUE, &h))
		flip(t[vi].pValue, t[vi].ulValueLen, h);
	return rv;
}

static CK_RV w_DestroyObject(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o)
{
	GATE(F_DESTROYOBJECT, s);
	CK_RV rv = real->C_DestroyObject(s, o);
	untaint(o);
	return rv;
}

typedef CK_RV (*single_part)(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG, CK_BYTE_PTR, CK_ULONG_PTR);

/* end_operation finishes the active single-part operation of s into a
 * scratch buffer and wipes it: the caller sees an error, and the session is
 * left without an active operation, as after a real error. */
static void end_operation(single_part fn, CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG inlen)
{
	CK_ULONG len = 0;
	if (fn(s, in, inlen, NULL, &len) != CKR_OK)
		return; /* the operation ended with that error */
	CK_BYTE_PTR tmp = calloc(1, len ? len : 1);
	if (tmp == NULL)
		return;
	(void)fn(s, in, inlen, tmp, &len);
	memset(tmp, 0, len);
	free(tmp);
}

static CK_RV single(int f, single_part fn, CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG inlen, CK_BYTE_PTR out,
		    CK_ULONG_PTR outlen)
{
	CK_RV rv;
	switch (gate(f, 1, s, &rv)) {
	case DEAD:
		return rv;
	case STOPPED:
		if (cfg.mode == M_FAIL)
			end_operation(fn, s, in, inlen);
		return rv;
	}
	rv = fn(s, in, inlen, out, outlen);
	uint64_t h;
	if (cfg.mode == M_CORRUPT && rv == CKR_OK && out != NULL && outlen != NULL && *outlen > 0 && decide(f, &h))
		flip(out, *outlen, h);
	return rv;
}

static CK_RV w_Encrypt(CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG inlen, CK_BYTE_PTR out, CK_ULONG_PTR outlen)
{
	return single(F_ENCRYPT, real->C_Encrypt, s, in, inlen, out, outlen);
}

static CK_RV w_Decrypt(CK_SESSION_HANDLE s, CK_BYTE_PTR in, CK_ULONG inlen, CK_BYTE_PTR out, CK_ULONG_PTR outlen)
{
	return single(F_DECRYPT, real->C_Decrypt, s, in, inlen, out, outlen);
}

static CK_RV w_WrapKey(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE wk, CK_OBJECT_HANDLE k, CK_BYTE_PTR out,
		       CK_ULONG_PTR outlen)
{
	GATE(F_WRAPKEY, s);
	CK_RV rv = real->C_WrapKey(s, m, wk, k, out, outlen);
	uint64_t h;
	if (cfg.mode == M_CORRUPT && rv == CKR_OK && out != NULL && outlen != NULL && *outlen > 0 && decide(F_WRAPKEY, &h))
		flip(out, *outlen, h);
	return rv;
}

static CK_RV w_UnwrapKey(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE uk, CK_BYTE_PTR in, CK_ULONG inlen,
			 CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR ph)
{
	GATE(F_UNWRAPKEY, s);
	CK_RV rv = real->C_UnwrapKey(s, m, uk, in, inlen, t, n, ph);
	if (cfg.mode == M_CORRUPT && rv == CKR_OK && ph != NULL && decide(F_UNWRAPKEY, NULL)) {
		pthread_mutex_lock(&taint_mu);
		if (ntainted == MAX_TAINTED) /* forget the oldest */
			memmove(tainted, tainted + 1, sizeof tainted[0] * --ntainted);
		tainted[ntainted++] = *ph;
		pthread_mutex_unlock(&taint_mu);
	}
	return rv;
}

static CK_RV w_GenerateRandom(CK_SESSION_HANDLE s, CK_BYTE_PTR out, CK_ULONG len)
{
	GATE(F_GENERATERANDOM, s);
	CK_RV rv = real->C_GenerateRandom(s, out, len);
	uint64_t h;
	if (cfg.mode == M_CORRUPT && rv == CKR_OK && out != NULL && len > 0 && decide(F_GENERATERANDOM, &h))
		flip(out, len, h);
	return rv;
}

/* The other functions that take a session: a dropped session fails them,
 * and they can be failed, dropped, delayed or traced. */
#define PASS(name, F, params, args)                                                                                    \
	static CK_RV w_##name params                                                                                   \
	{                                                                                                              \
		GATE(F, s);                                                                                            \
		return real->C_##name args;                                                                            \
	}
#define BUF CK_BYTE_PTR in, CK_ULONG inlen
#define OUT CK_BYTE_PTR out, CK_ULONG_PTR outlen
PASS(GetSessionInfo, F_GETSESSIONINFO, (CK_SESSION_HANDLE s, CK_SESSION_INFO_PTR i), (s, i))
PASS(Login, F_LOGIN, (CK_SESSION_HANDLE s, CK_USER_TYPE u, CK_UTF8CHAR_PTR pin, CK_ULONG l), (s, u, pin, l))
PASS(Logout, F_LOGOUT, (CK_SESSION_HANDLE s), (s))
PASS(CreateObject, F_CREATEOBJECT, (CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR ph), (s, t, n, ph))
PASS(CopyObject, F_COPYOBJECT, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR ph),
     (s, o, t, n, ph))
PASS(GetObjectSize, F_GETOBJECTSIZE, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ULONG_PTR n), (s, o, n))
PASS(SetAttributeValue, F_SETATTRIBUTEVALUE, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n), (s, o, t, n))
PASS(FindObjectsInit, F_FINDOBJECTSINIT, (CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n), (s, t, n))
PASS(FindObjects, F_FINDOBJECTS, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE_PTR ph, CK_ULONG max, CK_ULONG_PTR n), (s, ph, max, n))
PASS(FindObjectsFinal, F_FINDOBJECTSFINAL, (CK_SESSION_HANDLE s), (s))
PASS(EncryptInit, F_ENCRYPTINIT, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k))
PASS(EncryptUpdate, F_ENCRYPTUPDATE, (CK_SESSION_HANDLE s, BUF, OUT), (s, in, inlen, out, outlen))
PASS(EncryptFinal, F_ENCRYPTFINAL, (CK_SESSION_HANDLE s, OUT), (s, out, outlen))
PASS(DecryptInit, F_DECRYPTINIT, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k))
PASS(DecryptUpdate, F_DECRYPTUPDATE, (CK_SESSION_HANDLE s, BUF, OUT), (s, in, inlen, out, outlen))
PASS(DecryptFinal, F_DECRYPTFINAL, (CK_SESSION_HANDLE s, OUT), (s, out, outlen))
PASS(DigestInit, F_DIGESTINIT, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m), (s, m))
PASS(Digest, F_DIGEST, (CK_SESSION_HANDLE s, BUF, OUT), (s, in, inlen, out, outlen))
PASS(DigestUpdate, F_DIGESTUPDATE, (CK_SESSION_HANDLE s, BUF), (s, in, inlen))
PASS(DigestKey, F_DIGESTKEY, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE k), (s, k))
PASS(DigestFinal, F_DIGESTFINAL, (CK_SESSION_HANDLE s, OUT), (s, out, outlen))
PASS(SignInit, F_SIGNINIT, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k))
PASS(Sign, F_SIGN, (CK_SESSION_HANDLE s, BUF, OUT), (s, in, inlen, out, outlen))
PASS(SignUpdate, F_SIGNUPDATE, (CK_SESSION_HANDLE s, BUF), (s, in, inlen))
PASS(SignFinal, F_SIGNFINAL, (CK_SESSION_HANDLE s, OUT), (s, out, outlen))
PASS(VerifyInit, F_VERIFYINIT, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k))
PASS(Verify, F_VERIFY, (CK_SESSION_HANDLE s, BUF, CK_BYTE_PTR sig, CK_ULONG siglen), (s, in, inlen, sig, siglen))
PASS(VerifyUpdate, F_VERIFYUPDATE, (CK_SESSION_HANDLE s, BUF), (s, in, inlen))
PASS(VerifyFinal, F_VERIFYFINAL, (CK_SESSION_HANDLE s, BUF), (s, in, inlen))
PASS(GenerateKey, F_GENERATEKEY, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR ph),
     (s, m, t, n, ph))
PASS(GenerateKeyPair, F_GENERATEKEYPAIR,
     (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR pt, CK_ULONG pn, CK_ATTRIBUTE_PTR vt, CK_ULONG vn,
      CK_OBJECT_HANDLE_PTR pub, CK_OBJECT_HANDLE_PTR priv),
     (s, m, pt, pn, vt, vn, pub, priv))
PASS(DeriveKey, F_DERIVEKEY,
     (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE base, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR ph),
     (s, m, base, t, n, ph))
PASS(SeedRandom, F_SEEDRANDOM, (CK_SESSION_HANDLE s, BUF), (s, in, inlen))
PASS(GetOperationState, F_GETOPERATIONSTATE, (CK_SESSION_HANDLE s, OUT), (s, out, outlen))
PASS(SetOperationState, F_SETOPERATIONSTATE, (CK_SESSION_HANDLE s, BUF, CK_OBJECT_HANDLE ek, CK_OBJECT_HANDLE ak), (s, in, inlen, ek, ak))
PASS(InitPIN, F_INITPIN, (CK_SESSION_HANDLE s, CK_UTF8CHAR_PTR pin, CK_ULONG l), (s, pin, l))
PASS(SetPIN, F_SETPIN, (CK_SESSION_HANDLE s, CK_UTF8CHAR_PTR o, CK_ULONG ol, CK_UTF8CHAR_PTR n, CK_ULONG nl), (s, o, ol, n, nl))
PASS(SignRecoverInit, F_SIGNRECOVERINIT, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k))
PASS(SignRecover, F_SIGNRECOVER, (CK_SESSION_HANDLE s, BUF, OUT), (s, in, inlen, out, outlen))
PASS(VerifyRecoverInit, F_VERIFYRECOVERINIT, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k))
PASS(VerifyRecover, F_VERIFYRECOVER, (CK_SESSION_HANDLE s, BUF, OUT), (s, in, inlen, out, outlen))
PASS(DigestEncryptUpdate, F_DIGESTENCRYPTUPDATE, (CK_SESSION_HANDLE s, BUF, OUT), (s, in, inlen, out, outlen))
PASS(DecryptDigestUpdate, F_DECRYPTDIGESTUPDATE, (CK_SESSION_HANDLE s, BUF, OUT), (s, in, inlen, out, outlen))
PASS(SignEncryptUpdate, F_SIGNENCRYPTUPDATE, (CK_SESSION_HANDLE s, BUF, OUT), (s, in, inlen, out, outlen))
PASS(DecryptVerifyUpdate, F_DECRYPTVERIFYUPDATE, (CK_SESSION_HANDLE s, BUF, OUT), (s, in, inlen, out, outlen))
PASS(GetFunctionStatus, F_GETFUNCTIONSTATUS, (CK_SESSION_HANDLE s), (s))
PASS(CancelFunction, F_CANCELFUNCTION, (CK_SESSION_HANDLE s), (s))

static CK_RV fail_Initialize(CK_VOID_PTR args)
{
	(void)args;
	fprintf(stderr, "faultpkcs11: %s\n", cfg.err);
	return cfg.errcode;
}

static CK_RV fail_Finalize(CK_VOID_PTR reserved)
{
	(void)reserved;
	return CKR_CRYPTOKI_NOT_INITIALIZED;
}

static void load(void)
{
	configure_checked();
	real_handle = dlopen(cfg.module, RTLD_NOW | RTLD_LOCAL);
	CK_C_GetFunctionList get = NULL;
	if (real_handle == NULL) {
		if (!cfg.err[0])
			snprintf(cfg.err, sizeof cfg.err, "cannot load the real module %s: %s", cfg.module, dlerror());
	} else {
		get = (CK_C_GetFunctionList)dlsym(real_handle, "C_GetFunctionList");
		if (get == NULL && !cfg.err[0])
			snprintf(cfg.err, sizeof cfg.err, "%s has no C_GetFunctionList", cfg.module);
	}
	if (get == NULL || get(&real) != CKR_OK || real == NULL) {
		if (!cfg.err[0])
			snprintf(cfg.err, sizeof cfg.err, "C_GetFunctionList of %s failed", cfg.module);
		cfg.errcode = CKR_GENERAL_ERROR;
		/* A list whose C_Initialize reports why; callers stop there. */
		memset(&list, 0, sizeof list);
		list.version.major = 2;
		list.version.minor = 40;
		list.C_Initialize = fail_Initialize;
		list.C_Finalize = fail_Finalize;
		real = NULL;
		return;
	}
	list = *real;
	list.C_Initialize = w_Initialize;
	list.C_Finalize = w_Finalize;
	list.C_GetSlotList = w_GetSlotList;
	list.C_GetTokenInfo = w_GetTokenInfo;
	list.C_GetMechanismList = w_GetMechanismList;
	list.C_GetMechanismInfo = w_GetMechanismInfo;
	list.C_OpenSession = w_OpenSession;
	list.C_CloseSession = w_CloseSession;
	list.C_CloseAllSessions = w_CloseAllSessions;
	list.C_GetAttributeValue = w_GetAttributeValue; /* also delivers corrupted unwraps */
	list.C_DestroyObject = w_DestroyObject;
	list.C_Encrypt = w_Encrypt;
	list.C_Decrypt = w_Decrypt;
	list.C_WrapKey = w_WrapKey;
	list.C_UnwrapKey = w_UnwrapKey;
	list.C_GenerateRandom = w_GenerateRandom;
#define SET(name) list.C_##name = w_##name;
	SET(GetSessionInfo) SET(Login) SET(Logout) SET(CreateObject) SET(CopyObject) SET(GetObjectSize)
	SET(SetAttributeValue) SET(FindObjectsInit) SET(FindObjects) SET(FindObjectsFinal) SET(EncryptInit)
	SET(EncryptUpdate) SET(EncryptFinal) SET(DecryptInit) SET(DecryptUpdate) SET(DecryptFinal) SET(DigestInit)
	SET(Digest) SET(DigestUpdate) SET(DigestKey) SET(DigestFinal) SET(SignInit) SET(Sign) SET(SignUpdate)
	SET(SignFinal) SET(VerifyInit) SET(Verify) SET(VerifyUpdate) SET(VerifyFinal) SET(GenerateKey)
	SET(GenerateKeyPair) SET(DeriveKey) SET(SeedRandom) SET(GetOperationState) SET(SetOperationState) SET(InitPIN)
	SET(SetPIN) SET(SignRecoverInit) SET(SignRecover) SET(VerifyRecoverInit) SET(VerifyRecover)
	SET(DigestEncryptUpdate) SET(DecryptDigestUpdate) SET(SignEncryptUpdate) SET(DecryptVerifyUpdate)
	SET(GetFunctionStatus) SET(CancelFunction)
#undef SET
}

EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR pp)
{
	if (pp == NULL)
		return CKR_ARGUMENTS_BAD;
	pthread_once(&load_once, load);
	*pp = &list;
	return CKR_OK;
}
