/* IPv4 addresses and prefixes as qvisor reads and writes them: dotted quads
 * ("192.168.100.1") and "a.b.c.d/len", nothing looser.  Addresses are held
 * as uint32_t in host byte order so that masks and offsets are plain
 * arithmetic; convert with htonl() at the edge to the kernel. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* "255.255.255.255" and "255.255.255.255/32", with the terminating NUL. */
#define ND_IPV4_STRLEN 16
#define ND_IPV4_CIDR_STRLEN 19

/* A dotted quad, strictly (inet_pton: four decimal parts 0-255, no leading
 * zeros, no hex, no shorthand, nothing around it).  -EINVAL otherwise. */
int nd_ipv4_parse(const char *s, uint32_t *ret);
/* Writes the dotted quad of `addr` into buf (ND_IPV4_STRLEN bytes). */
void nd_ipv4_format(uint32_t addr, char buf[static ND_IPV4_STRLEN]);

/* "a.b.c.d/len" with len 0-32 written in decimal without leading zeros.
 * Host bits may be set (an interface address such as 192.168.100.1/24);
 * nd_ipv4_cidr_normalised() tells whether they are.  -EINVAL otherwise. */
int nd_ipv4_cidr_parse(const char *s, uint32_t *ret_addr, unsigned *ret_len);
/* Writes "a.b.c.d/len" into buf (ND_IPV4_CIDR_STRLEN bytes). */
void nd_ipv4_cidr_format(uint32_t addr, unsigned len, char buf[static ND_IPV4_CIDR_STRLEN]);

/* The netmask of a prefix length (0-32) in host byte order: 24 → 0xffffff00. */
uint32_t nd_ipv4_mask(unsigned len);
/* Whether addr/len has no host bits set (192.168.100.0/24 yes, .1/24 no). */
bool nd_ipv4_cidr_normalised(uint32_t addr, unsigned len);
