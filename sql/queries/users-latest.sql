-- name: users-latest*
-- The 10 latest registrations (users_registration_date_idx).
SELECT user_id, first_name, last_name, contact_number, email, gender, date_of_birth,
       residential_address, id_number, city_of_birth, registration_date
FROM users ORDER BY registration_date DESC, user_id DESC LIMIT 10;
