/* sd_cli_check.h - the check the Stable Diffusion lesson tests share: a run
 * of a lesson program (07, 08, 09) against diffusers' recorded run of the
 * same settings. */
#ifndef DL_SD_CLI_CHECK_H
#define DL_SD_CLI_CHECK_H

/* golden: diffusers' run (tensors "latents_final", "image" [1, H, W, 3] in
 * [0, 1]); latents: the program's --save-latents file; png: its picture.
 * Checks latents_final within 1e-3 (and prints the max difference) and every
 * PNG byte within one level of round(image * 255). */
void sd_check_cli_run(const char *golden, const char *latents, const char *png);

#endif
