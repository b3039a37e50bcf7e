/* NBP v1, device side: framed, checksummed, sequence-numbered request/reply lines over the UART.
 * Replies are streamed: the frame CRC is computed while the bytes go out, so no reply buffer (and
 * no limit on reply length) is needed.
 */
#include "nb_protocol.h"

#include <string.h>

#include "nb_crc32.h"
#include "nb_fmt.h"
#include "nb_hal.h"
#include "nb_model.h"
#include "nb_runtime.h"
#include "nb_stack.h"

/* ---------------------------------------------------------------------------------------------- */
/* Reply writer                                                                                    */

static char nb_tx_buf[64];
static size_t nb_tx_len;
static uint32_t nb_tx_crc;

static void nb_tx_flush(void)
{
    if (nb_tx_len > 0) {
        hal_uart_write((const uint8_t *)nb_tx_buf, nb_tx_len);
        nb_tx_len = 0;
    }
}

static void nb_tx_raw(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (nb_tx_len == sizeof nb_tx_buf) {
            nb_tx_flush();
        }
        nb_tx_buf[nb_tx_len++] = s[i];
    }
}

/* Body bytes: counted into the frame CRC. */
static void nb_tx(const char *s, size_t n)
{
    nb_tx_crc = nb_crc32(nb_tx_crc, s, n);
    nb_tx_raw(s, n);
}

static void nb_tx_str(const char *s)
{
    nb_tx(s, strlen(s));
}

/* A value from the model or board description: anything that would break the framing becomes '_'. */
static void nb_tx_word(const char *s)
{
    for (; s != NULL && *s != '\0'; s++) {
        const char c = (*s > ' ' && *s < 127 && *s != '*' && *s != '=' && *s != ',') ? *s : '_';
        nb_tx(&c, 1);
    }
}

static void nb_tx_u32(uint32_t v)
{
    char buf[10];
    nb_tx(buf, nb_fmt_u32(buf, v));
}

static void nb_tx_hex32(uint32_t v)
{
    char buf[10] = {'0', 'x'};
    nb_fmt_hex32(buf + 2, v);
    nb_tx(buf, sizeof buf);
}

static void nb_tx_key(const char *key)
{
    nb_tx(" ", 1);
    nb_tx_str(key);
    nb_tx("=", 1);
}

static void nb_tx_begin(uint32_t seq)
{
    nb_tx_crc = 0;
    nb_tx_u32(seq);
}

static void nb_tx_begin_event(const char *name)
{
    nb_tx_crc = 0;
    nb_tx("! ", 2);
    nb_tx_str(name);
}

static void nb_tx_end(void)
{
    char trailer[10] = {'*'};
    nb_fmt_hex32(trailer + 1, nb_tx_crc);
    trailer[9] = '\n';
    nb_tx_raw(trailer, sizeof trailer);
    nb_tx_flush();
}

static void nb_reply_ok(uint32_t seq)
{
    nb_tx_begin(seq);
    nb_tx(" ok", 3);
}

static void nb_reply_err(uint32_t seq, const char *code, const char *message)
{
    nb_tx_begin(seq);
    nb_tx(" err ", 5);
    nb_tx_str(code);
    if (message != NULL && message[0] != '\0') {
        nb_tx(" ", 1);
        nb_tx_str(message);
    }
    nb_tx_end();
}

static void nb_reply_frame_error(const char *code)
{
    nb_tx_crc = 0;
    nb_tx("? err ", 6);
    nb_tx_str(code);
    nb_tx_end();
}

/* ---------------------------------------------------------------------------------------------- */
/* State and commands                                                                              */

typedef struct {
    const char *s;
    size_t n;
} nb_tok_t;

#define NB_MAX_TOKENS 6u

static unsigned nb_level;
static int nb_have_output;
static uint32_t nb_stamps[NB_MAX_LAYERS + 1]; /* layer-boundary counter readings, last timed run */

static int nb_tok_is(const nb_tok_t *t, const char *word)
{
    const size_t n = strlen(word);
    return t->n == n && memcmp(t->s, word, n) == 0;
}

static void nb_cmd_hello(uint32_t seq, const nb_tok_t *args, size_t nargs)
{
    (void)args;
    if (nargs != 0) {
        nb_reply_err(seq, "arg", "hello takes no argument");
        return;
    }
    const nb_model_t *m = &nb_model;
    nb_reply_ok(seq);
    nb_tx_key("proto");
    nb_tx_u32(NB_PROTO_VERSION);
    nb_tx_key("fw");
    nb_tx_word(NB_BUILD_ID);
    nb_tx_key("model");
    nb_tx_word(m->hash);
    nb_tx_key("name");
    nb_tx_word(m->name);
    nb_tx_key("levels");
    nb_tx_u32(m->n_levels);
    nb_tx_key("board");
    nb_tx_word(nb_board_info.board);
    nb_tx_key("cycles");
    nb_tx_word(nb_board_info.cycle_source);
    nb_tx_key("clock");
    nb_tx_u32(nb_board_info.clock_hz);
    nb_tx_key("in");
    nb_tx_u32(nb_tensor_bytes(m, m->input));
    nb_tx_key("out");
    nb_tx_u32(nb_tensor_bytes(m, m->output));
    nb_tx_key("layers");
    nb_tx_u32(m->n_layers);
    nb_tx_key("arena");
    nb_tx_u32(m->arena_size);
    nb_tx_key("maxline");
    nb_tx_u32(NB_MAXLINE);
    nb_tx_end();
}

static void nb_cmd_level(uint32_t seq, const nb_tok_t *args, size_t nargs)
{
    uint32_t k;
    if (nargs != 1 || !nb_parse_u32(args[0].s, args[0].n, &k)) {
        nb_reply_err(seq, "arg", "usage: level K");
        return;
    }
    if (k >= nb_model.n_levels) {
        nb_reply_err(seq, "range", "level out of range");
        return;
    }
    nb_level = k;
    nb_reply_ok(seq);
    nb_tx_key("level");
    nb_tx_u32(k);
    nb_tx_end();
}

static void nb_cmd_load(uint32_t seq, const nb_tok_t *args, size_t nargs)
{
    uint32_t offset;
    if (nargs != 2 || !nb_parse_u32(args[0].s, args[0].n, &offset) || args[1].n == 0 ||
        (args[1].n & 1u) != 0) {
        nb_reply_err(seq, "arg", "usage: load OFFSET HEX");
        return;
    }
    for (size_t i = 0; i < args[1].n; i++) {
        if (nb_hex_digit(args[1].s[i]) < 0) {
            nb_reply_err(seq, "arg", "bad hex");
            return;
        }
    }
    const uint32_t n = (uint32_t)(args[1].n / 2u);
    const uint32_t size = nb_tensor_bytes(&nb_model, nb_model.input);
    if (offset > size || n > size - offset) {
        nb_reply_err(seq, "range", "beyond the input tensor");
        return;
    }
    int8_t *dst = nb_input(&nb_model) + offset;
    for (uint32_t i = 0; i < n; i++) {
        const int hi = nb_hex_digit(args[1].s[2 * i]), lo = nb_hex_digit(args[1].s[2 * i + 1]);
        dst[i] = (int8_t)(uint8_t)((hi << 4) | lo);
    }
    nb_reply_ok(seq);
    nb_tx_key("loaded");
    nb_tx_u32(offset + n);
    nb_tx_end();
}

static void nb_cmd_infer(uint32_t seq, const nb_tok_t *args, size_t nargs)
{
    const nb_model_t *m = &nb_model;
    uint32_t n, warmup, crc;
    if (nargs != 3 || !nb_parse_u32(args[0].s, args[0].n, &n) ||
        !nb_parse_u32(args[1].s, args[1].n, &warmup) || !nb_parse_hex32(args[2].s, args[2].n, &crc)) {
        nb_reply_err(seq, "arg", "usage: infer N W CRC");
        return;
    }
    if (n < 1u || n > NB_MAX_RUNS || warmup > NB_MAX_WARMUP) {
        nb_reply_err(seq, "range", "N must be 1..32 and W 0..1000");
        return;
    }
    if (m->n_layers > NB_MAX_LAYERS) {
        nb_reply_err(seq, "state", "model has more layers than NB_MAX_LAYERS");
        return;
    }
    const uint32_t have = nb_crc32(0, nb_input(m), nb_tensor_bytes(m, m->input));
    if (have != crc) {
        char msg[16] = "device=";
        nb_fmt_hex32(msg + 7, have);
        msg[15] = '\0';
        nb_reply_err(seq, "input-crc", msg);
        return;
    }
    nb_have_output = 0;
    int status = NB_OK;
    for (uint32_t i = 0; i < warmup && status == NB_OK; i++) {
        status = nb_run(m, nb_level, NULL);
    }
    /* raw readings only while timing; conversion (which may branch) happens after the last run */
    uint32_t t_start[NB_MAX_RUNS], t_end[NB_MAX_RUNS];
    for (uint32_t i = 0; i < n && status == NB_OK; i++) {
        t_start[i] = hal_counter();
        status = nb_run_stamped(m, nb_level, nb_stamps);
        t_end[i] = hal_counter();
    }
    if (status != NB_OK) {
        nb_reply_err(seq, "state", nb_status_name(status));
        return;
    }
    nb_have_output = 1;
    nb_reply_ok(seq);
    nb_tx_key("n");
    nb_tx_u32(n);
    nb_tx_key("cycles");
    for (uint32_t i = 0; i < n; i++) {
        if (i > 0) {
            nb_tx(",", 1);
        }
        nb_tx_u32(hal_counter_elapsed(t_start[i], t_end[i]));
    }
    nb_tx_end();
}

static void nb_cmd_out(uint32_t seq, const nb_tok_t *args, size_t nargs)
{
    (void)args;
    if (nargs != 0) {
        nb_reply_err(seq, "arg", "out takes no argument");
        return;
    }
    if (!nb_have_output) {
        nb_reply_err(seq, "state", "no inference yet");
        return;
    }
    const uint8_t *out = (const uint8_t *)nb_output(&nb_model);
    const uint32_t size = nb_tensor_bytes(&nb_model, nb_model.output);
    nb_reply_ok(seq);
    nb_tx_key("out");
    for (uint32_t i = 0; i < size; i++) {
        char hex[2];
        nb_fmt_hex_bytes(hex, out + i, 1);
        nb_tx(hex, 2);
    }
    nb_tx_end();
}

static void nb_cmd_layers(uint32_t seq, const nb_tok_t *args, size_t nargs)
{
    (void)args;
    if (nargs != 0) {
        nb_reply_err(seq, "arg", "layers takes no argument");
        return;
    }
    if (!nb_have_output) {
        nb_reply_err(seq, "state", "no inference yet");
        return;
    }
    nb_reply_ok(seq);
    nb_tx_key("cycles");
    for (uint32_t i = 0; i < nb_model.n_layers; i++) {
        if (i > 0) {
            nb_tx(",", 1);
        }
        nb_tx_u32(hal_counter_elapsed(nb_stamps[i], nb_stamps[i + 1u]));
    }
    nb_tx_end();
}

static void nb_cmd_mem(uint32_t seq, const nb_tok_t *args, size_t nargs)
{
    (void)args;
    (void)nargs;
    nb_reply_ok(seq);
    nb_tx_key("stack");
    nb_tx_u32(nb_stack_high_water());
    nb_tx_key("arena");
    nb_tx_u32(nb_model.arena_size);
    nb_tx_end();
}

static void nb_cmd_help(uint32_t seq, const nb_tok_t *args, size_t nargs);

/* Diagnostics. noinline keeps a symbol to check a reported fault PC against. */
__attribute__((noinline)) static void nb_cmd_diag_fault(uint32_t seq, const nb_tok_t *args, size_t nargs)
{
    (void)seq;
    (void)args;
    (void)nargs;
    __builtin_trap(); /* UDF: UsageFault, escalated to HardFault */
}

__attribute__((noinline)) static void nb_cmd_diag_hang(uint32_t seq, const nb_tok_t *args, size_t nargs)
{
    (void)seq;
    (void)args;
    (void)nargs;
    for (;;) {
    }
}

typedef struct {
    const char *name;
    void (*run)(uint32_t seq, const nb_tok_t *args, size_t nargs);
} nb_command_t;

static const nb_command_t nb_commands[] = {
    {"hello", nb_cmd_hello}, {"level", nb_cmd_level},   {"load", nb_cmd_load},
    {"infer", nb_cmd_infer}, {"out", nb_cmd_out},       {"layers", nb_cmd_layers},
    {"mem", nb_cmd_mem},     {"help", nb_cmd_help},     {"_fault", nb_cmd_diag_fault},
    {"_hang", nb_cmd_diag_hang},
};
#define NB_N_COMMANDS (sizeof nb_commands / sizeof nb_commands[0])

static void nb_cmd_help(uint32_t seq, const nb_tok_t *args, size_t nargs)
{
    (void)args;
    (void)nargs;
    nb_reply_ok(seq);
    nb_tx_key("commands");
    for (size_t i = 0; i < NB_N_COMMANDS; i++) {
        if (i > 0) {
            nb_tx(",", 1);
        }
        nb_tx_str(nb_commands[i].name);
    }
    nb_tx_end();
}

/* ---------------------------------------------------------------------------------------------- */
/* Line handling                                                                                   */

void nb_protocol_handle_line(const char *line, size_t len)
{
    /* frame: BODY*CRC with CRC = 8 hex digits of crc32(BODY) */
    size_t star = len;
    while (star > 0 && line[star - 1] != '*') {
        star--;
    }
    uint32_t crc;
    if (star == 0 || !nb_parse_hex32(line + star, len - star, &crc) ||
        nb_crc32(0, line, star - 1) != crc) {
        nb_reply_frame_error("crc");
        return;
    }
    const size_t body_len = star - 1;

    /* SEQ in 1..65535, then a space */
    size_t i = 0;
    while (i < body_len && line[i] >= '0' && line[i] <= '9') {
        i++;
    }
    uint32_t seq;
    if (i == 0 || i > 5 || !nb_parse_u32(line, i, &seq) || seq < 1u || seq > 65535u ||
        (i < body_len && line[i] != ' ')) {
        nb_reply_frame_error("crc");
        return;
    }

    nb_tok_t toks[NB_MAX_TOKENS + 1];
    size_t n_tok = 0;
    while (i < body_len) {
        while (i < body_len && line[i] == ' ') {
            i++;
        }
        const size_t start = i;
        while (i < body_len && line[i] != ' ') {
            i++;
        }
        if (i > start) {
            if (n_tok == NB_MAX_TOKENS + 1) {
                nb_reply_err(seq, "arg", "too many arguments");
                return;
            }
            toks[n_tok].s = line + start;
            toks[n_tok].n = i - start;
            n_tok++;
        }
    }
    if (n_tok == 0) {
        nb_reply_err(seq, "unknown", "empty command");
        return;
    }
    for (size_t c = 0; c < NB_N_COMMANDS; c++) {
        if (nb_tok_is(&toks[0], nb_commands[c].name)) {
            nb_commands[c].run(seq, toks + 1, n_tok - 1);
            return;
        }
    }
    nb_reply_err(seq, "unknown", "command");
}

void nb_protocol_serve(void)
{
    static char line[NB_MAXLINE];
    size_t n = 0;
    int overflow = 0;
    for (;;) {
        const char c = (char)hal_uart_read_byte();
        if (c == '\r') {
            continue;
        }
        if (c == '\n') {
            if (overflow) {
                nb_reply_frame_error("overflow");
            } else if (n > 0) {
                nb_protocol_handle_line(line, n);
            }
            n = 0;
            overflow = 0;
            continue;
        }
        if (n < sizeof line) {
            line[n++] = c;
        } else {
            overflow = 1;
        }
    }
}

void nb_protocol_boot(void)
{
    nb_tx_begin_event("boot");
    nb_tx_key("proto");
    nb_tx_u32(NB_PROTO_VERSION);
    nb_tx_key("fw");
    nb_tx_word(NB_BUILD_ID);
    nb_tx_key("model");
    nb_tx_word(nb_model.hash);
    nb_tx_key("board");
    nb_tx_word(nb_board_info.board);
    nb_tx_end();
}

void nb_fault_report(const nb_fault_info_t *f)
{
    nb_tx_len = 0; /* drop a reply the fault interrupted: the event must be a line of its own */
    nb_tx_raw("\n", 1);
    nb_tx_begin_event("fault");
    nb_tx_key("pc");
    nb_tx_hex32(f->pc);
    nb_tx_key("lr");
    nb_tx_hex32(f->lr);
    nb_tx_key("psr");
    nb_tx_hex32(f->psr);
    nb_tx_key("cfsr");
    nb_tx_hex32(f->cfsr);
    nb_tx_key("hfsr");
    nb_tx_hex32(f->hfsr);
    nb_tx_key("mmfar");
    nb_tx_hex32(f->mmfar);
    nb_tx_key("bfar");
    nb_tx_hex32(f->bfar);
    nb_tx_end();
}
