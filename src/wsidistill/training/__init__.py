"""Training the Teacher and distilling Students: the loop, the Teacher-target cache, augmentation."""
