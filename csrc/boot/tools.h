#ifndef PHASE_BOOT_TOOLS_H
#define PHASE_BOOT_TOOLS_H

int phase_verify_main(int argc, char **argv);
int phase_fetch_main(int argc, char **argv);
int phase_discover_main(int argc, char **argv);
int phase_dht_main(int argc, char **argv);

/* libsodium set up for a verify-only program that must not block on the boot-time entropy pool. */
int phase_boot_crypto_init(void);

long long phase_now_ms(void);

#endif
