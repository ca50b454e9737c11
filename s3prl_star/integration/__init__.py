"""Everything that patches or wraps s3prl: the patches (`patches`), the PR/SF corpus readers its PyPI
package lacks (`ctc_corpus`), the `star_hubert*` upstreams (`hub`), its two runners as `s3prl-star
pretrain` / `downstream` with checked configs and safe resume, and `link-s3prl` for a git checkout."""
