"""The mini-SUPERB: espeak-ng speech (`synthetic`), the corpus in every task's layout (`corpus`), a small
HuBERT teacher trained on it (`teacher_pretrain`), random teachers in s3prl's formats (`random_teacher`)
and the end-to-end `demo`."""
